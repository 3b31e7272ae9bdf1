"""One LMDB environment per shard replica: the imperative shell around the stored state.

Owns: opening with explicit options, the batch write transaction that group-commits the
entries applied in one Raft tick together with the applied index, per-command child
transactions (so a command that fails leaves no partial writes), read transactions for
linearizable reads, compacting copies for snapshots, and swapping in a snapshot received
from the leader. A reader/writer lock keeps readers out while the environment is swapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Iterator

import lmdb

from coda.storage import keys

DATA_FILE = "data.mdb"


@dataclass(frozen=True)
class LmdbOptions:
    """Every LMDB option we rely on, set explicitly (STYLE.md: no implicit defaults)."""
    map_size_bytes: int = 8 * 1024**3   # address space reserved, not disk used
    max_dbs: int = 32
    max_readers: int = 256
    sync: bool = True          # fsync on each batch commit: LMDB is our applied state
    # One fsync per commit instead of two. A crash may then undo the last committed batch
    # (LMDB stays consistent); that only lowers the applied index, and the Raft journal,
    # flushed before any ack, replays those entries. tests/faults/test_power_loss.py.
    metasync: bool = False
    writemap: bool = False     # nested (per-command) transactions need writemap off
    readahead: bool = False    # random access; readahead only pollutes the page cache


class RWLock:
    """Many readers or one writer; writers wait for readers to leave."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    def acquire_shared(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def shared(self):
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._writer = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class LmdbTxn:
    """`storage.txn.Txn` over an lmdb transaction."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict):
        self._txn = txn
        self._dbs = dbs

    def close(self) -> None:
        """End a read transaction and drop it. py-lmdb frees a reader slot only when the
        Transaction object is destroyed, not when it ends: a traceback that keeps a frame
        holding this wrapper (an error answered while 2,000 other reads wait) would
        otherwise hold a slot, and 256 of them filled the table (MDB_READERS_FULL)."""
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.abort()

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[db])

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[db])

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(max(prefix, start)):
            return
        for key, value in cursor:
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(value)

    def scan_reverse(self, db: str, *, prefix: bytes = b"",
                     before: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        cursor = self._txn.cursor(db=self._dbs[db])
        bounds = [b for b in (before, _prefix_end(prefix)) if b is not None]
        upper = min(bounds) if bounds else None
        if upper is None:
            found = cursor.last()
        else:  # the first key >= upper, then one back: the last key < upper
            found = cursor.prev() if cursor.set_range(upper) else cursor.last()
        while found:
            key = cursor.key()
            if not key.startswith(prefix):
                return  # below the prefix: every key from here on is too
            yield bytes(key), bytes(cursor.value())
            found = cursor.prev()


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with prefix (None: no such key)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class ShardStore:
    """The LMDB environment of one shard replica, at `path` (a directory)."""

    def __init__(self, path: str, options: LmdbOptions = LmdbOptions()):
        self.path = path
        self.options = options
        self._lock = RWLock()
        self._env: lmdb.Environment | None = None
        self._dbs: dict = {}
        self._open()

    def _open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        opt = self.options
        self._env = lmdb.open(
            self.path, subdir=True, map_size=opt.map_size_bytes, max_dbs=opt.max_dbs,
            max_readers=opt.max_readers, sync=opt.sync, metasync=opt.metasync,
            writemap=opt.writemap, readahead=opt.readahead, lock=True, create=True)
        self._dbs = {name: self._env.open_db(name.encode()) for name in keys.ALL_DBS}

    def close(self) -> None:
        with self._lock.exclusive():
            if self._env is not None:
                self._env.close()
                self._env = None

    # --- reads -------------------------------------------------------------------------
    @contextlib.contextmanager
    def read(self) -> Iterator[LmdbTxn]:
        with self._lock.shared():
            # No local name for the lmdb Transaction: this frame may outlive the read in
            # a traceback, and only the wrapper, closed below, may hold it.
            view = LmdbTxn(self._env.begin(write=False), self._dbs)
            try:
                yield view
            finally:
                view.close()

    def applied_index(self) -> int:
        with self.read() as txn:
            raw = txn.get(keys.META, keys.META_APPLIED_INDEX)
        return keys.from_u64(raw) if raw else 0

    # --- writes ------------------------------------------------------------------------
    def begin_batch(self) -> "WriteBatch":
        """A write transaction for the entries applied in one tick (group commit)."""
        return WriteBatch(self)

    # --- snapshots ---------------------------------------------------------------------
    def copy_compact(self, dest_dir: str) -> str:
        """A compacting copy of the environment; returns the path of its data file."""
        os.makedirs(dest_dir, exist_ok=True)
        with self._lock.shared():
            self._env.copy(dest_dir, compact=True)
        return os.path.join(dest_dir, DATA_FILE)

    def replace_with(self, data_file: str) -> None:
        """Swap in a snapshot's data file (moved, not copied), under the exclusive lock."""
        with self._lock.exclusive():
            self._env.close()
            for name in (DATA_FILE, "lock.mdb"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, name))
            shutil.move(data_file, os.path.join(self.path, DATA_FILE))
            _fsync_dir(self.path)
            self._open()

    # --- inspection (tests, `coda cluster status`) -------------------------------------
    def digest(self, *, with_applied_index: bool = True) -> str:
        """SHA-256 over every record of every database, in key order; without the
        applied index, the state alone (replicas stopped a no-op entry apart agree)."""
        h = hashlib.sha256()
        with self.read() as txn:
            for name in keys.ALL_DBS:
                h.update(b"\x01" + name.encode())
                for key, value in txn.scan(name):
                    if (not with_applied_index and name == keys.META
                            and key == keys.META_APPLIED_INDEX):
                        continue
                    h.update(len(key).to_bytes(4, "big") + key)
                    h.update(len(value).to_bytes(4, "big") + value)
        return h.hexdigest()


class WriteBatch:
    """One LMDB write transaction spanning several applied commands.

    Each command runs in a child transaction: a command that raises is rolled back alone
    and the batch goes on. `commit(applied_index)` records the last applied Raft index in
    the same transaction as the effects, so a restart knows exactly what is applied.
    """

    def __init__(self, store: ShardStore):
        self._store = store
        store._lock.acquire_shared()  # hold off a snapshot swap while the batch is open
        self._txn = store._env.begin(write=True)
        self.entries = 0

    @contextlib.contextmanager
    def command(self) -> Iterator[LmdbTxn]:
        child = self._store._env.begin(write=True, parent=self._txn)
        try:
            yield LmdbTxn(child, self._store._dbs)
        except BaseException:
            child.abort()
            raise
        else:
            child.commit()
            self.entries += 1

    def write(self, items: list, check: bool = True) -> None:
        """Make a replicated write set: [[db, key, value or None (delete)], ...], in order.
        Raises ValueError (nothing of it written) on an unknown db or a non-bytes key or
        value. check=False: items this process built itself (a leader's own write set)."""
        dbs = self._store._dbs
        for item in items if check else ():
            if not (isinstance(item, list) and len(item) == 3 and item[0] in dbs
                    and isinstance(item[1], bytes) and 0 < len(item[1]) <= 511
                    and (item[2] is None or isinstance(item[2], bytes))):
                raise ValueError(f"malformed write {item!r:.200}")
        # Straight into the batch's transaction (no child): everything was checked
        # above, and an LMDB error here (disk full) fails the whole batch, which the
        # replica then never commits (flow.replica exits and replays from the journal).
        txn = self._txn
        for db, key, value in items:
            if value is None:
                txn.delete(key, db=dbs[db])
            else:
                txn.put(key, value, db=dbs[db])
        self.entries += 1

    def commit(self, applied_index: int) -> None:
        try:
            self._txn.put(keys.META_APPLIED_INDEX, keys.u64(applied_index),
                          db=self._store._dbs[keys.META])
            self._txn.commit()
        finally:
            self._release()

    def abort(self) -> None:
        try:
            self._txn.abort()
        finally:
            self._release()

    def _release(self) -> None:
        self._store._lock.release_shared()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

