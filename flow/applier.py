"""Applies committed Raft entries to a shard's LMDB store, in batches (group commit).

The thin shell between pysyncobj's apply callback and the pure state machine:
- entries at or below the store's applied index are skipped (a restart replays the
  journal from the start, and LMDB already holds their effects);
- each entry runs in a child transaction: an error result or an exception rolls back that
  entry alone, and an exception becomes an Internal error result (an exception escaping
  apply would wedge the Raft node: every tick would retry the same entry);
- all entries applied in one tick share one LMDB write transaction, committed with the
  last applied index by `commit()`;
- an entry may be a batch of commands (flow.commands.encode_batch): each runs in its own
  child transaction, as if it were its own entry, and the result is {"batch": [...]};
- or the write set a leader computed for its commands (flow.speculation): made as is.
It owns no thread: the replica calls it from pysyncobj's tick thread only.
"""

from __future__ import annotations

import logging
import time

from coda.errors import CodaError, Internal
from coda.flow import commands, state_machine
from coda.storage.env import ShardStore, WriteBatch

log = logging.getLogger(__name__)

# Only a replay (no one waiting) or a broken log/LMDB pairing reaches a skipped entry; a
# fresh proposal that gets this answer must not read it as success.
SKIPPED = {"error": Internal("entry skipped: at or below the applied index of LMDB").to_wire()}


class Applier:
    def __init__(self, store: ShardStore):
        self.store = store
        self.applied_index = store.applied_index()
        self._batch: WriteBatch | None = None
        self._batch_started_s = 0.0
        self.last_batch_duration_s = 0.0

    def apply(self, index: int, data) -> dict:
        """Apply the entry at Raft index `index`; never raises."""
        if index <= self.applied_index:
            return SKIPPED
        self._begin()
        try:
            written = commands.split_writes(data)
            datas = None if written is not None else commands.split_batch(data)
        except CodaError as exc:  # a malformed frame: answered, never raised
            result = {"error": exc.to_wire()}
        else:
            if written is not None:
                result = self._write(index, *written)
            elif datas is None:
                result = self._apply_one(data, index)
            else:
                result = {"batch": [self._apply_one(one, index) for one in datas]}
        self.applied_index = index
        return result

    def apply_own_write_set(self, index: int, term: int, items: list) -> dict:
        """The entry at `index` is the write set this leader computed and still holds
        decoded (flow.speculation.own_write_set): made without decoding its bytes."""
        if index <= self.applied_index:
            return SKIPPED
        self._begin()
        result = self._write(index, term, items, check=False)
        self.applied_index = index
        return result

    def _begin(self) -> None:
        if self._batch is None:
            self._batch = self.store.begin_batch()
            self._batch_started_s = time.perf_counter()

    def _write(self, index: int, term: int, items: list, check: bool = True) -> dict:
        """A write set the leader computed (flow.speculation): made as it is. The answer
        its proposer waits for is the leader's; this says only whose entry it was."""
        try:
            self._batch.write(items, check=check)
        except ValueError as exc:
            log.error("write-set entry %d is malformed, not applied: %s", index, exc)
            return {"error": Internal(f"write-set entry {index} is malformed: {exc}").to_wire()}
        return {"written_in_term": term}

    def _apply_one(self, data, index: int) -> dict:
        try:
            with self._batch.command() as txn:
                result = state_machine.apply(txn, data)
                if state_machine.is_error(result):
                    raise _RollBack(result)
            return result
        except _RollBack as rollback:
            return rollback.result
        except Exception as exc:  # a bug in apply: contained, reported, never re-raised
            log.exception("apply of entry %d raised; answered as an internal error", index)
            return {"error": Internal(f"apply of entry {index} failed: {exc!r}").to_wire()}

    def commit(self) -> int:
        """Commit the open batch, if any; returns how many commands it applied (errors,
        rolled back, not counted)."""
        if self._batch is None:
            return 0
        batch, self._batch = self._batch, None
        batch.commit(self.applied_index)
        self.last_batch_duration_s = time.perf_counter() - self._batch_started_s
        return batch.entries

    def reload(self) -> None:
        """After the store was replaced by a snapshot: adopt its applied index."""
        assert self._batch is None, "a snapshot must not land inside an open batch"
        self.applied_index = self.store.applied_index()


class _RollBack(Exception):
    def __init__(self, result: dict):
        self.result = result
