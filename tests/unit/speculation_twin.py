"""An Applier that also runs every entry the way a leader replicates it (flow.speculation).

`TwinApplier` stands in for `Applier` in the scripted state machine tests (Sim, in
test_execution_sm): each entry is applied as a command to store A, as before, and, on a
second store B, run by `Speculation` over B's LMDB plus the entries not yet written to B,
then written to B as its write set (every other entry the way the leader writes its
own: from the decoded writes it kept, `own_write_set`). B's writes lag A's by `LAG` entries, so every
command runs on pending writes, not only on LMDB. The leader's answer must equal A's
result for every entry, and `verify()` (after the test) that B's state equals A's.
"""

from __future__ import annotations

import struct

from pysyncobj import pickle as raft_pickle

from coda.flow import commands
from coda.flow.applier import Applier
from coda.flow.speculation import Speculation
from coda.storage.env import LmdbOptions, ShardStore

LAG = 3
TERM = 1
_REGULAR = struct.pack("B", 0)
_FUNC_ID = 0


class TwinApplier:
    created: list["TwinApplier"] = []

    def __init__(self, store: ShardStore):
        self.store = store
        self._a = Applier(store)
        self._b_store = ShardStore(store.path + "-writes", LmdbOptions(sync=False, metasync=False))
        self._b = Applier(self._b_store)
        self._spec = Speculation(self._b_store, 0)
        self._spec.on_become_leader([])
        self._unwritten: list[tuple[int, bytes, bytes]] = []
        self.write_sets = 0
        self.own_write_sets = 0
        TwinApplier.created.append(self)

    @property
    def applied_index(self) -> int:
        return self._a.applied_index

    def apply(self, index: int, data) -> dict:
        result = self._a.apply(index, data)
        if index <= self._b.applied_index or (self._unwritten and index <= self._unwritten[-1][0]):
            return result  # a replay the test makes on purpose: A skipped it too
        entry = self._spec.transform(_REGULAR + raft_pickle.dumps((_FUNC_ID, (data,))),
                                     index, TERM)
        self._spec.end_tick()
        entry_data = raft_pickle.loads(entry[1:])[1][0]
        if commands.split_writes(entry_data) is not None:
            self.write_sets += 1
            answer = self._spec._answers[index][1]
            assert _comparable(answer) == _comparable(result), (index, answer, result)
        self._unwritten.append((index, entry, entry_data))
        return result

    def commit(self) -> int:
        done = self._a.commit()
        self._write(len(self._unwritten) - LAG)
        return done

    def _write(self, count: int) -> None:
        if count <= 0:
            return
        ready, self._unwritten = self._unwritten[:count], self._unwritten[count:]
        for index, entry, entry_data in ready:
            own = self._spec.own_write_set(index, entry)
            # A copy of the same bytes is not the leader's own object: applied from bytes.
            assert self._spec.own_write_set(index, bytes(bytearray(entry))) is None
            if own is not None and index % 2 == 0:
                applied = self._b.apply_own_write_set(index, *own[:2])
                self.own_write_sets += 1
            else:
                applied = self._b.apply(index, entry_data)
            if commands.split_writes(entry_data) is not None:
                assert "error" not in applied, applied  # a write set is made as it is
            self._spec.answer(index, applied)
        self._b.commit()
        self._spec.committed(self._b.applied_index, True, self._b.applied_index + LAG)

    def verify(self) -> None:
        self._write(len(self._unwritten))
        assert not self._spec.pending, "pending writes left after everything was written"
        # The test may have closed A's store already (its own teardown): read it again.
        a = self.store if self.store._env is not None else ShardStore(self.store.path)
        try:
            assert self._b_store.applied_index() == a.applied_index()
            assert self._b_store.digest() == a.digest(), \
                "replicating write sets gave another state than running the commands"
        finally:
            if a is not self.store:
                a.close()

    def close(self) -> None:
        self._spec.end_tick()
        if self._b._batch is not None:  # a failed check left it open; it holds the lock
            self._b._batch.abort()
            self._b._batch = None
        self._b_store.close()


def _comparable(result: dict) -> dict:
    """An internal error's message names where it was raised; its code is what counts."""
    if "error" in result and result["error"].get("code") == "INTERNAL":
        return {"error": "INTERNAL"}
    if "batch" in result:
        return {"batch": [_comparable(r) for r in result["batch"]]}
    return result
