"""Writes not yet in LMDB, layered over it: the leader's speculative state.

A shard leader runs the state machine when it appends an entry to its Raft log, not when
the entry commits, and replicates the entry's write set instead of the command (see
flow.speculation). Each entry's state must then include the writes of every entry before
it in the log, committed or not. `PendingWrites` holds those writes, one layer per log
index, until LMDB has them; `OverlayTxn` is the `Txn` a command runs on: its own writes,
then the pending layers (newest first), then LMDB.

Values are bytes; None is a deletion (a tombstone that hides the key in LMDB).
Nothing here touches LMDB or threads: the caller (the tick thread) owns both.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from typing import Iterator

from coda.storage.txn import Txn

Writes = dict  # (db, key) -> bytes | None, in the order they were made


class PendingWrites:
    """Write sets of log entries not yet committed to LMDB, newest winning."""

    def __init__(self):
        self._layers: deque[tuple[int, Writes]] = deque()
        self._latest: dict[str, dict[bytes, tuple[int, bytes | None]]] = {}
        self._sorted: dict[str, list[bytes]] = {}  # per db, the keys of _latest, sorted

    def __len__(self) -> int:
        return len(self._layers)

    @property
    def last_index(self) -> int:
        return self._layers[-1][0] if self._layers else 0

    def push(self, index: int, writes: Writes) -> None:
        """Add the writes of the entry at `index` (indexes never go down)."""
        assert not self._layers or index >= self._layers[-1][0]
        self._layers.append((index, writes))
        for (db, key), value in writes.items():
            latest = self._latest.get(db)
            if latest is None:
                latest = self._latest[db] = {}
                self._sorted[db] = []
            if key not in latest:
                bisect.insort(self._sorted[db], key)
            latest[key] = (index, value)

    def drop_through(self, index: int) -> None:
        """LMDB now holds every entry up to `index`: forget their layers."""
        while self._layers and self._layers[0][0] <= index:
            layer_index, writes = self._layers.popleft()
            for db, key in writes:
                latest = self._latest[db]
                if latest.get(key, (None,))[0] == layer_index:  # no later layer wrote it
                    del latest[key]
                    keys = self._sorted[db]
                    del keys[bisect.bisect_left(keys, key)]

    def clear(self) -> None:
        self._layers.clear()
        self._latest.clear()
        self._sorted.clear()

    def lookup(self, db: str, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value or None for deleted) if a pending layer wrote the key."""
        found = self._latest.get(db, {}).get(key)
        return (False, None) if found is None else (True, found[1])

    def keys_from(self, db: str, low: bytes, prefix: bytes) -> Iterator[bytes]:
        """Pending keys of `db` >= low that begin with prefix, in order. Lazy: pending
        layers change only between commands, never during a command's scan."""
        keys = self._sorted.get(db)
        if not keys:
            return iter(())
        start = bisect.bisect_left(keys, low)
        upper = _prefix_end(prefix) if prefix else None
        end = bisect.bisect_left(keys, upper) if upper is not None else len(keys)
        return (keys[i] for i in range(start, end))


class OverlayTxn:
    """A `Txn` whose writes are kept (in `writes`) instead of made: reads see them, then
    the pending layers, then `base` (a read transaction of LMDB)."""

    def __init__(self, base: Txn, pending: PendingWrites):
        self._base = base
        self._pending = pending
        self.writes: Writes = {}

    def get(self, db: str, key: bytes) -> bytes | None:
        own = self.writes.get((db, key), _ABSENT)
        if own is not _ABSENT:
            return own
        found, value = self._pending.lookup(db, key)
        return value if found else self._base.get(db, key)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"a value is bytes, not {type(value).__name__}")
        self.writes[(db, _checked(key))] = bytes(value)

    def delete(self, db: str, key: bytes) -> bool:
        existed = self.get(db, key) is not None
        self.writes[(db, _checked(key))] = None
        return existed

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        low = max(prefix, start)
        own = sorted(k for d, k in self.writes if d == db and k >= low and k.startswith(prefix))
        pending = self._pending.keys_from(db, low, prefix)
        # Merge the three sorted sources; a key's newest source wins, None hides it.
        base = ((key, 2, value) for key, value in self._base.scan(db, prefix=prefix, start=start))
        ours = ((key, 0, None) for key in own)
        theirs = ((key, 1, None) for key in pending)
        last = None
        for key, source, value in heapq.merge(ours, theirs, base):
            if key == last:
                continue  # a newer source had it
            last = key
            if source == 0:
                value = self.writes[(db, key)]
            elif source == 1:
                value = self._pending.lookup(db, key)[1]
            if value is not None:
                yield key, value

    def scan_reverse(self, db: str, *, prefix: bytes = b"",
                     before: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        raise NotImplementedError("the state machine scans forward only")


_ABSENT = object()
KEY_BYTES_MAX = 511  # LMDB's (MDB_MAXKEYSIZE): what it would refuse, refused here too


def _checked(key) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or not 0 < len(key) <= KEY_BYTES_MAX:
        raise ValueError(f"an LMDB key is 1..{KEY_BYTES_MAX} bytes, got {key!r:.80}")
    return bytes(key)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that begins with prefix (None: there is none)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else None
