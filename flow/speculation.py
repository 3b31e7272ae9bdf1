"""The leader runs each command once; its replicas make the writes it made.

Without this, every replica re-ran the Python state machine for every command: on a
3-node cluster the same work three times, ~2/3 of the nodes' apply CPU on followers
(#8). Now the leader runs a command when pysyncobj appends it to the log, on the tick
thread, where the entry's Raft index and term are known, and the log entry becomes the
command's write set (flow.commands.encode_writes); replicas, the leader included, make
those writes when the entry commits, in the same group-committed LMDB transaction as
before, and the proposer gets the answer the leader computed.

Why it is correct: the leader runs the entry at index i on LMDB (every entry up to the
applied index) plus the writes of every entry in (applied, i) of its own log, held in
`PendingWrites`. A leader never rewrites its log, and an entry, once written at index i
in term t, is only ever at index i; if it commits, everything before it in its log is
the committed prefix (Raft's log matching). So the write set is exactly what running
the command at i would write, on every replica. Errors and rollbacks are the applier's:
a command that fails writes nothing and its error is the answer.

What stays as before:
- An entry whose write set would exceed `limits.write_set_bytes_max` goes as the command
  itself; every replica runs it at commit (deterministic, so it writes what the leader's
  pending view already assumed).
- A new leader takes in what its log holds past the applied index (write sets of earlier
  leaders, commands of older builds) before it appends anything; a deposed one forgets
  its pending writes. Anything unexpected (an exception here) turns speculation off,
  and entries go as commands, until LMDB has caught up with the log.
- Answers wait for the commit: `answer(index, result)` hands the proposer the leader's
  answer only if the committed entry is the one this node wrote (same term).

Speculative dispatch: the first workflow task of a run a start just created (eager
start) is known here as the start is appended, and everything it needs (the run's
WorkflowExecutionStarted) was written by that same entry. `take_first_tasks()` hands
the replica those assignments, for it to send before the entry commits
(flow.replica._on_entries_sent). Workflow code has no side effects, and its
completion, proposed to this leader, is appended after the start: it commits only if
the start does. If the start never commits, the run never existed and a completion of
it is refused as stale. Tasks (side effects) are never dispatched before their commit.
"""

from __future__ import annotations

import logging
import struct

from pysyncobj import pickle as raft_pickle  # reads entries of any pickle protocol

from coda.errors import CodaError, Internal
from coda.flow import commands, limits, metrics, state_machine
from coda.flow.raft_wire import pickle_dumps
from coda.storage.overlay import OverlayTxn, PendingWrites

log = logging.getLogger(__name__)

_REGULAR = struct.pack("B", 0)  # pysyncobj's type byte of a regular (replicated call) entry
_NO_OP = struct.pack("B", 1)


class Speculation:
    """Tick thread only. `store` is the shard's ShardStore (read transactions of LMDB)."""

    def __init__(self, store, shard: int, *, enabled: bool = True):
        self.store = store
        self.shard = shard
        self.enabled = enabled       # false: entries always go as commands
        self.pending = PendingWrites()
        self.active = False          # leading, with a pending view it can trust
        self._answers: dict[int, tuple] = {}  # index -> (term, answer, entry, items, writes)
        self._read = None            # (context manager, txn) of LMDB, for one tick
        # [supervisor id, request id, items] of new runs' first workflow tasks appended
        # this tick (write sets only), for the replica to dispatch before they commit.
        self._first_tasks: list = []
        label = str(shard)
        self._as_writes = metrics.appended_entries.labels(label, "writes")
        self._as_commands = metrics.appended_entries.labels(label, "commands")

    # --- leadership ----------------------------------------------------------------------
    def on_become_leader(self, tail: list) -> None:
        """tail: this node's log entries (command, index, term) after the applied index."""
        self.pending.clear()
        self.active = self.enabled
        if not self.enabled:
            return
        try:
            for command, index, _term in tail:
                self._take_in(command, index)
        except Exception:
            log.exception("shard %d: reading the log's uncommitted tail failed; entries go "
                          "as commands until LMDB catches up", self.shard)
            self._deactivate()
        finally:
            self._end_reads()

    def on_step_down(self) -> None:
        self._deactivate()

    def _deactivate(self) -> None:
        self.active = False
        self.pending.clear()

    def _take_in(self, command: bytes, index: int) -> None:
        if command[:1] == _NO_OP:
            return
        call = _entry_call(command)
        if call is None:
            raise ValueError(f"entry {index} is not a replicated call")
        data = call[1]
        written = commands.split_writes(data)
        if written is not None:
            self.pending.push(index, {(db, key): value for db, key, value in written[1]})
        else:
            self._run_entry(index, data)  # a command: it writes at commit what it writes here

    # --- appending (pysyncobj's journal add, on the leader) ------------------------------
    def transform(self, command: bytes, index: int, term: int) -> bytes:
        """The entry to store at (index, term) in place of `command`."""
        if not self.active:
            self._as_commands.inc()
            return command
        call = _entry_call(command)
        if call is None:  # not ours to read; its writes unknown: stop until caught up
            self._deactivate()
            self._as_commands.inc()
            return command
        func_id, data = call
        try:
            answer, writes = self._run_entry(index, data)
            items = commands.write_items(writes)
            encoded = commands.encode_write_items(term, items)
        except Exception:
            log.exception("shard %d: running entry %d on the leader failed; entries go as "
                          "commands until LMDB catches up", self.shard, index)
            self._deactivate()
            self._as_commands.inc()
            return command
        if len(encoded) > limits.write_set_bytes_max:
            self._as_commands.inc()
            return command
        entry = _REGULAR + pickle_dumps((func_id, (encoded,)))
        # The entry object itself is kept: when it commits, the log hands this very
        # object back (own_write_set), and its writes need no unpickling nor decoding;
        # the writes dict is what the event loop's CommittedView layers once it commits.
        self._answers[index] = (term, answer, entry, items, writes)
        if len(answer.get("batch", ())) <= limits.dispatch_early_batch_commands_max:
            self._first_tasks.extend(first_workflow_tasks(answer))
        self._as_writes.inc()
        return entry

    def _run_entry(self, index: int, data) -> tuple[dict, dict]:
        """Run an entry's commands on the pending view; their writes join it at `index`."""
        try:
            datas = commands.split_batch(data)
        except CodaError as exc:
            return {"error": exc.to_wire()}, {}
        if datas is None:
            answer, writes = self._run_one(index, data)
            self.pending.push(index, writes)
            return answer, writes
        answers, merged = [], {}
        for one in datas:
            answer, writes = self._run_one(index, one)
            self.pending.push(index, writes)  # the next command of the batch sees them
            merged.update(writes)
            answers.append(answer)
        return {"batch": answers}, merged

    def _run_one(self, index: int, data) -> tuple[dict, dict]:
        """As Applier._apply_one: an error or an exception writes nothing."""
        txn = OverlayTxn(self._base(), self.pending)
        try:
            answer = state_machine.apply(txn, data)
        except Exception as exc:
            log.exception("apply of entry %d raised; answered as an internal error", index)
            return {"error": Internal(f"apply of entry {index} failed: {exc!r}").to_wire()}, {}
        if state_machine.is_error(answer):
            return answer, {}
        return answer, txn.writes

    def _base(self):
        if self._read is None:
            manager = self.store.read()
            self._read = (manager, manager.__enter__())
        return self._read[1]

    def take_first_tasks(self) -> tuple[list, OverlayTxn | None]:
        """The new runs' first workflow tasks appended since the last call, and a view of
        the pending state to build their dispatches from (valid until end_tick). Nothing
        if speculation turned off meanwhile: the pending view is gone, and the entries
        already logged commit or not as they are (their tasks then go at commit)."""
        groups, self._first_tasks = self._first_tasks, []
        if not groups or not self.active:
            return [], None
        return groups, OverlayTxn(self._base(), self.pending)

    def end_tick(self) -> None:
        """Close this tick's LMDB read (the next tick sees the batches committed since)."""
        self._first_tasks = []
        self._end_reads()

    def _end_reads(self) -> None:
        if self._read is not None:
            manager, self._read = self._read[0], None
            manager.__exit__(None, None, None)

    # --- committing ------------------------------------------------------------------------
    def own_write_set(self, index: int, entry) -> tuple[int, list, dict] | None:
        """(term, write items, writes dict) if `entry`, committed at `index`, is the very
        entry object transform() returned for that index: this leader's own write set,
        whose decoded form it still holds. Any other entry (another leader's, a command,
        one read back from the journal) is None and is applied from its bytes."""
        stored = self._answers.get(index)
        if stored is None or stored[2] is not entry:
            return None
        return stored[0], stored[3], stored[4]

    def answer(self, index: int, result: dict) -> dict:
        """What the proposer of the entry at `index` hears, given what applying it gave."""
        stored = self._answers.pop(index, None)
        term = result.get("written_in_term") if isinstance(result, dict) else None
        if term is None:
            if stored is not None:
                # This node wrote a write set at `index`, yet what committed there was
                # not applied as one (a malformed frame: a bug). Pending writes assumed
                # it: stop speculating until LMDB has caught up with the log.
                log.error("shard %d: entry %d was not applied as the write set this leader "
                          "wrote: %s", self.shard, index, result)
                self._deactivate()
            return result
        if stored is not None and stored[0] == term:
            return stored[1]  # the answer the leader computed
        return {"ok": {}}  # another leader's entry: nobody here waits for it

    def committed(self, applied_index: int, is_leader: bool, last_log_index: int) -> None:
        """LMDB holds every entry up to applied_index. A leader whose speculation was
        off turns it on again once LMDB holds its whole log (nothing pending to know)."""
        self.pending.drop_through(applied_index)
        # Answers are added in index order, so the first is the oldest. One at or below
        # the applied index is of an entry a snapshot install skipped: never answered.
        while self._answers and next(iter(self._answers)) <= applied_index:
            del self._answers[next(iter(self._answers))]
        if (self.enabled and is_leader and not self.active
                and applied_index >= last_log_index):
            self.pending.clear()
            self.active = True


def first_workflow_tasks(answer: dict) -> list:
    """The assignments in an entry's answer that are the first workflow task of the run
    its command started: [supervisor id, request id, items], every item a workflow task
    of that new run (whose history that command alone wrote)."""
    groups = []
    for result in answer.get("batch", (answer,)):
        ok = result.get("ok") if isinstance(result, dict) else None
        if not (isinstance(ok, dict) and ok.get("started") is True):
            continue
        for group in result.get("effects", {}).get("assigned", ()):
            if all(item["kind"] == "wft" and item["run_id"] == ok["run_id"]
                   for item in group[2]):
                groups.append(group)
    return groups


def _entry_call(command: bytes):
    """(method id, data) of an `apply_entry(data)` call entry, or None."""
    if command[:1] != _REGULAR:
        return None
    try:
        call = raft_pickle.loads(command[1:])
    except Exception:
        return None
    if (isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], tuple)
            and len(call[1]) == 1):
        return call[0], call[1][0]
    return None
