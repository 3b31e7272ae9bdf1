"""Reads of a shard leader's committed state before LMDB shows all of it.

A leader answers a committed entry's proposer before the LMDB transaction holding the
entry commits: that commit's fdatasync (~0.5 ms here) sat on every step's path, because
whoever heard the answer read LMDB next (the dispatch built from an assignment just
committed, a start waiting for its run to close, a read after its barrier). The entry
is durable already, in a majority of Raft journals, which replay it into LMDB after any
crash. Those readers read through `CommittedView`: LMDB, then the write sets of the
committed entries it may not hold yet, newest first (flow.replica hands them over with
the answers).

A layer LMDB already holds is dropped by the applied index the read's own LMDB
transaction records (`keys.META_APPLIED_INDEX`, committed with the writes), so a layer
never hides a newer value LMDB has. Layers are usually one or two batches (they live
from the answer to the LMDB commit right after it), so a read looks through them in
turn for a key; scans use a sorted index of the layers' keys, built on the first scan
after the layers changed (a dispatch of a task reads its run's history by a scan).

One owner: the thread that calls `add` and `read` (a node's event loop); the write dicts
it is given are never changed afterwards (flow.speculation builds a fresh one per entry).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from typing import Iterator

from coda.storage import keys
from coda.storage.overlay import Writes

# A view drops what LMDB holds on every read; past this many layers, also when given more.
LAYERS_HELD_MAX = 64


class CommittedView:
    def __init__(self, store):
        self._store = store
        self._layers: deque[tuple[int, Writes]] = deque()
        self._current: _Layers | None = None  # of _layers, newest first; None: changed

    def __len__(self) -> int:
        return len(self._layers)

    def add(self, layers) -> None:
        """layers: (Raft index, writes) of committed entries, in index order."""
        held = self._layers
        for index, writes in layers:
            if not held or index > held[-1][0]:
                held.append((index, writes))
                self._current = None
        if len(held) > LAYERS_HELD_MAX:  # nobody read for a while
            with self.read():
                pass

    def read(self) -> "_Reading":
        """`with view.read() as txn:` a read-only Txn of the committed state."""
        return _Reading(self)

    def _trim(self, txn) -> "_Layers | None":
        """The layers LMDB (as `txn` sees it) does not hold yet; None if there are none."""
        held = self._layers
        if not held:
            return None
        raw = txn.get(keys.META, keys.META_APPLIED_INDEX)
        applied = keys.from_u64(raw) if raw else 0
        while held and held[0][0] <= applied:
            held.popleft()
            self._current = None
        if not held:
            return None
        if self._current is None:
            self._current = _Layers(tuple(writes for _, writes in reversed(held)))
        return self._current


class _Layers:
    """Write dicts, newest first, and (lazily) each db's layered keys, sorted. Immutable
    once made: a read keeps the one it began with while the view moves on."""
    __slots__ = ("newest_first", "_sorted")

    def __init__(self, newest_first: tuple):
        self.newest_first = newest_first
        self._sorted: dict[str, list[bytes]] | None = None

    def sorted_keys(self, db: str) -> list[bytes]:
        if self._sorted is None:
            per_db: dict[str, set] = {}
            for writes in self.newest_first:
                for d, key in writes:
                    per_db.setdefault(d, set()).add(key)
            self._sorted = {d: sorted(found) for d, found in per_db.items()}
        return self._sorted.get(db, _NONE)


class _Reading:
    """The context manager of one read (a class: this is on every dispatch's path)."""
    __slots__ = ("_view", "_manager")

    def __init__(self, view: CommittedView):
        self._view = view
        self._manager = None

    def __enter__(self):
        self._manager = self._view._store.read()
        txn = self._manager.__enter__()
        try:
            layers = self._view._trim(txn)
        except BaseException as exc:
            self._manager.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return txn if layers is None else LayeredRead(txn, layers)

    def __exit__(self, *exc_info):
        manager, self._manager = self._manager, None
        return manager.__exit__(*exc_info)


class LayeredRead:
    """A read-only `Txn`: the layers (write dicts, newest first), then `base` (LMDB)."""
    __slots__ = ("_base", "_layers", "_index")

    def __init__(self, base, layers: _Layers):
        self._base = base
        self._layers = layers.newest_first
        self._index = layers

    def get(self, db: str, key: bytes) -> bytes | None:
        wanted = (db, key)
        for writes in self._layers:
            value = writes.get(wanted, _ABSENT)
            if value is not _ABSENT:
                return value
        return self._base.get(db, key)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        raise TypeError("a read of committed state takes no writes")

    def delete(self, db: str, key: bytes) -> bool:
        raise TypeError("a read of committed state takes no writes")

    def _layered_value(self, db: str, key: bytes) -> bytes | None:
        wanted = (db, key)
        return next(w[wanted] for w in self._layers if wanted in w)

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        layered_keys = self._index.sorted_keys(db)
        first = bisect.bisect_left(layered_keys, max(prefix, start))
        end = _end_of(layered_keys, prefix)
        layered = (layered_keys[i] for i in range(first, end))
        base = self._base.scan(db, prefix=prefix, start=start)
        yield from self._merged(db, layered, base, reverse=False)

    def scan_reverse(self, db: str, *, prefix: bytes = b"",
                     before: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        layered_keys = self._index.sorted_keys(db)
        first = bisect.bisect_left(layered_keys, prefix)
        end = _end_of(layered_keys, prefix)
        if before is not None:
            end = min(end, bisect.bisect_left(layered_keys, before))
        layered = (layered_keys[i] for i in range(end - 1, first - 1, -1))
        base = self._base.scan_reverse(db, prefix=prefix, before=before)
        yield from self._merged(db, layered, base, reverse=True)

    def _merged(self, db: str, layered, base, reverse: bool):
        # For one key the layered source comes first (merge is stable): it is newer.
        ours = ((key, None) for key in layered)
        theirs = ((key, value) for key, value in base)
        last = None
        for key, value in heapq.merge(ours, theirs, key=_first, reverse=reverse):
            if key == last:
                continue
            last = key
            if value is None:
                value = self._layered_value(db, key)  # None: a delete hides LMDB's
            if value is not None:
                yield key, value


def _first(item: tuple) -> bytes:
    return item[0]


def _end_of(sorted_keys: list[bytes], prefix: bytes) -> int:
    """Where the keys that begin with prefix end in sorted_keys."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return len(sorted_keys)  # no key is above every key beginning with it
    return bisect.bisect_left(sorted_keys, trimmed[:-1] + bytes([trimmed[-1] + 1]))


_NONE: list = []


_ABSENT = object()
