"""One shard replica on one node: a pysyncobj Raft member applying into LMDB.

Threads: pysyncobj's tick thread applies entries, commits LMDB batches, writes and loads
snapshots; the node's asyncio loop proposes commands and serves reads. They meet only
through `loop.call_soon_threadsafe` (results) and `_status` (an immutable dict the tick
thread replaces every ~0.25 s), so neither blocks the other.

- One replicated entry point, `apply_entry(data: bytes)`: versioned msgpack commands
  (flow.commands), so pysyncobj's method ids never change. A leader turns each entry
  into its write set as pysyncobj appends it (`_checkCommandsToApply` sets the journal's
  transform: flow.speculation); every replica then applies writes, not commands.
- Group commit: `_SyncObj__applyLogEntries` is wrapped; every entry applied in a tick goes
  into one LMDB transaction, committed with the applied index. A leader whose entries of
  the tick are all its own write sets, and few (`limits.answer_early_batch_entries_max`),
  answers their proposers before that commit (its fdatasync was ~0.5 ms on every step's
  path) and hands the event loop those writes: everything on the loop reads through
  `committed` (storage.committed.CommittedView), LMDB plus the committed writes it may
  not hold yet. Otherwise results wait for the commit.
- Linearizable reads: `read(fn)` waits for a log barrier (a no-op command, batched across
  concurrent reads) to commit, then reads the committed view. Never `_isLeader()`: an
  isolated old leader can't commit a barrier, so it can't answer a read.
- Snapshots: a custom serializer writes [header | compacting LMDB copy] into one file, in
  the tick thread (no fork); the deserializer swaps LMDB only if the snapshot is newer.
- Proposals made in one event-loop turn go to Raft as one entry (flow.commands batch
  frame, bounded by count and bytes): the per-entry cost of pysyncobj (pickling, the
  journal, callbacks) is paid once per turn, and an idle shard adds no wait (the batch
  leaves at the end of the turn it began in).
- A cap on proposals in flight; every proposal has a timeout (pysyncobj's callbacks may
  never fire, e.g. for entries covered by a snapshot install).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import struct
import tempfile
import time

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import _COMMAND_TYPE

from coda.errors import (CodaError, Indeterminate, NotLeader, ResourceExhausted, Unavailable,
                         from_wire)
from coda.flow import commands, dispatches, latency_trace, limits, metrics, queries
from coda.flow.applier import Applier
from coda.flow.config import NodeConfig
from coda.flow.raft_base import DurableSyncObj, register_journal
from coda.flow.raft_wire import pickle_dumps
from coda.flow.speculation import Speculation
from coda.storage import codec, keys
from coda.storage.env import ShardStore
from coda.storage.committed import CommittedView

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"CODASNP1"
_HEADER = struct.Struct(">8sQQ")  # magic, LMDB applied index, length of pickled raft_data
STATUS_PERIOD_S = 0.25
# How often a waiting read checks that this node still leads (pysyncobj has no callback).
LEADERSHIP_CHECK_S = 0.1

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_REGULAR_ENTRY = b"\x00"  # pysyncobj's type byte of a replicated call (apply_entry)


def election_timeouts_s(cfg: NodeConfig, shard: int) -> tuple[float, float]:
    """This replica's election timeout range. Shard s prefers node s mod n (nodes in id
    order) as its leader: that replica draws from the lower half of the configured range,
    the others from the upper half, so a cluster started together elects leaders spread
    over the nodes. One node leading most shards runs their event loops and sends in one
    process (one GIL): under W-seq a node leading 3 of 4 shards capped throughput. A
    preference only: after a failover leadership stays where it went (pysyncobj has no
    leadership transfer). Only for the first election: ShardReplica._widen_election_range."""
    t = cfg.raft
    middle_s = (t.election_timeout_min_s + t.election_timeout_max_s) / 2
    ids = sorted(n.id for n in cfg.nodes)
    if ids.index(cfg.node_id) == shard % len(ids):
        return t.election_timeout_min_s, middle_s
    return middle_s, t.election_timeout_max_s


def raft_conf(cfg: NodeConfig, shard: int, serializer, deserializer, on_state) -> SyncObjConf:
    """Every pysyncobj option we depend on, set explicitly."""
    t = cfg.raft
    base = cfg.shard_dir(shard)
    election_min_s, election_max_s = election_timeouts_s(cfg, shard)
    return SyncObjConf(
        autoTick=True,
        autoTickPeriod=t.auto_tick_period_s,
        appendEntriesPeriod=t.append_entries_period_s,
        appendEntriesUseBatch=True,
        appendEntriesBatchSizeBytes=256 * 1024,
        # Socket buffers (and pysyncobj's recv size) that hold whole append batches: its
        # 64 KiB default split every uncompressed batch over several sends and reads.
        sendBufferSize=2 * 1024 * 1024,
        recvBufferSize=512 * 1024,
        raftMinTimeout=election_min_s,
        raftMaxTimeout=election_max_s,
        leaderFallbackTimeout=t.leader_fallback_timeout_s,
        connectionTimeout=t.connection_timeout_s,
        connectionRetryTime=t.connection_retry_s,
        commandsQueueSize=limits.raft_commands_queue_max,
        commandsWaitLeader=False,       # we route to leaders ourselves
        dynamicMembershipChange=False,
        journalFile=os.path.join(base, "raft.journal"),
        fullDumpFile=os.path.join(base, "raft.snapshot"),
        serializer=serializer,
        deserializer=deserializer,
        logCompactionMinEntries=t.log_compaction_min_entries,
        logCompactionMinTime=t.log_compaction_min_time_s,
        logCompactionSplit=False,
        useFork=False,
        password=cfg.secret,
        bindAddress=cfg.me.raft_address(shard),
        maxBindRetries=5,
        bindRetryTime=1.0,
        onStateChanged=on_state,
        pollerType="auto",
    )


class ShardReplica(DurableSyncObj):
    def __init__(self, cfg: NodeConfig, shard: int, loop: asyncio.AbstractEventLoop):
        self.cfg = cfg
        self.shard = shard
        self.loop = loop
        self._label = str(shard)
        metrics.init_shard(self._label)
        base = cfg.shard_dir(shard)
        os.makedirs(base, exist_ok=True)
        _remove_snapshot_leftovers(base)
        self.store = ShardStore(os.path.join(base, "lmdb"))
        self.applier = Applier(self.store)
        self.speculation = Speculation(self.store, shard, enabled=cfg.raft.replicate_write_sets)
        self._results_after_commit: list = []
        self._apply_entry_id: int | None = None  # pysyncobj's method id of apply_entry
        # Event loop only: what its reads see (LMDB plus committed writes not in it yet).
        self.committed = CommittedView(self.store)
        self._answer_early = cfg.raft.answer_before_lmdb_commit
        self._dispatch_early = cfg.raft.dispatch_before_commit
        # Tick thread: this batch's own write sets (index, writes), and whether an entry
        # of it was applied any other way (its writes unknown here: answer after commit).
        self._batch_layers: list = []
        self._batch_gapped = False
        self._proposal_batch: list[tuple[bytes, asyncio.Future]] = []
        self._proposal_batch_bytes = 0
        self._in_flight = 0
        self._watched: dict[asyncio.Future, tuple[float, float, bool]] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._barrier_waiters: list[asyncio.Future] = []
        self._barrier_task: asyncio.Task | None = None
        self._status: dict = {"role": "follower", "term": 0, "leader": None}
        self._status_due_s = 0.0
        self._last_leader = None
        # Set by the shard's dispatcher (flow.dispatcher), called on the asyncio loop:
        # after each batch of this node's results is settled, and with the effects of
        # each committed command this node proposed.
        self.commit_listener = None
        self.effects_listener = None
        # ... and with the first workflow tasks of new runs as their starts are appended
        # (before they commit): [(supervisor id, request id, items, dispatches)].
        self.appended_listener = None
        conf = raft_conf(cfg, shard, self._write_snapshot, self._load_snapshot,
                         self._on_state_changed)
        self._raft_conf = conf  # its election range widens once a leader is seen
        register_journal(conf.journalFile, conf.fullDumpFile)
        peers = [n.raft_address(shard) for n in cfg.peers()]
        super().__init__(cfg.me.raft_address(shard), peers, conf)
        self._check_journal_covers_lmdb()
        self.install_waker()
        self.addOnTickCallback(self._publish_status)

    def _check_journal_covers_lmdb(self) -> None:
        """LMDB never holds effects of entries the journal lacks: applied entries were
        flushed first, and compaction keeps the last ones. If it does, the journal lost
        entries (a disk that lied about fsync, a file restored from an old backup), and new
        entries would reuse indexes LMDB counts as applied and be skipped: refuse to run."""
        journal_end = self.raft_journal[-1][1]
        applied = self.applier.applied_index
        if applied > journal_end:
            self.destroy_synchronous()
            self.store.close()
            raise RuntimeError(
                f"shard {self.shard}: LMDB has applied Raft index {applied} but the journal "
                f"ends at {journal_end}; the journal lost entries. Rebuild this replica "
                f"(delete {self.cfg.shard_dir(self.shard)}) so it is restored from its peers.")

    # === tick thread ===================================================================

    @replicated
    def apply_entry(self, data):
        index = self.raftLastApplied + 1
        return self.speculation.answer(index, self.applier.apply(index, data))

    def _SyncObj__doApplyCommand(self, command):
        # The leader's own write sets are applied from the decoded writes it kept, not
        # unpickled and msgpack-decoded again (~5 % of a leader's samples under W-seq).
        index = self.raftLastApplied + 1
        own = self.speculation.own_write_set(index, command)
        if own is None:
            # pysyncobj's no-op and membership entries write no state; anything else
            # (another leader's write set, a command) wrote what only LMDB will show.
            self._batch_gapped |= command[:1] == _REGULAR_ENTRY
            return super()._SyncObj__doApplyCommand(command)
        term, items, writes = own
        self._batch_layers.append((index, writes))
        return self.speculation.answer(index, self.applier.apply_own_write_set(index, term, items))

    def _checkCommandsToApply(self):
        # The leader appends this tick's proposals here: each becomes its write set.
        journal = self._SyncObj__raftLog
        if self.speculation.active and self._isLeader():
            journal.transform = self.speculation.transform
        try:
            super()._checkCommandsToApply()
        finally:
            journal.transform = None
            self.speculation.end_tick()

    def _on_entries_sent(self) -> None:
        # Speculative dispatch (flow.speculation): a new run's first workflow task goes to
        # its supervisor while the start replicates, not after it commits. Built here, from
        # the pending view (the loop reads only what committed), while the entries just
        # sent are flushed; handed to the loop in one wake-up.
        groups, txn = self.speculation.take_first_tasks()
        if (not groups or not self._dispatch_early or self.appended_listener is None
                or self._in_flight > limits.dispatch_early_proposals_in_flight_max):
            return  # a busy shard: they go at the commit, with its batch
        try:
            built = [(sid, request_id, items,
                      [dispatches.dispatch_of(txn, item) for item in items])
                     for sid, request_id, items in groups]
        except Exception:  # a bug, not a state: these tasks are then sent at the commit
            log.exception("shard %d: building dispatches of appended starts failed", self.shard)
            return
        self.loop.call_soon_threadsafe(self.appended_listener, built)

    def _SyncObj__onBecomeLeader(self):
        super()._SyncObj__onBecomeLeader()
        # Entries past LMDB's applied index (earlier leaders', and the no-op just
        # appended): the state every entry this leader appends is run on includes them.
        self.speculation.on_become_leader(
            self._SyncObj__getEntries(self.applier.applied_index + 1))

    def _last_log_index(self) -> int:
        journal = self._SyncObj__raftLog
        return journal[-1][1] if len(journal) else 0

    def _SyncObj__applyLogEntries(self):
        try:
            need_send = SyncObj._SyncObj__applyLogEntries(self)
            self._commit_batch()
        except BaseException:
            # LMDB failed under us (disk full, I/O error): the applied index in memory is
            # ahead of what is stored. Stop; a restart replays the journal from LMDB's index.
            log.critical("shard %d: applying committed entries failed; exiting", self.shard,
                         exc_info=True)
            logging.shutdown()
            os._exit(70)
        return need_send

    def _commit_batch(self) -> None:
        results, self._results_after_commit = self._results_after_commit, []
        layers, self._batch_layers = self._batch_layers, []
        early = (bool(results) and self._answer_early and not self._batch_gapped
                 and len(layers) <= limits.answer_early_batch_entries_max)
        self._batch_gapped = False
        # Early: the entries are committed (in a majority of journals, this one
        # flushed); the loop's reads see their writes through the committed view until
        # LMDB has them.
        if early:
            self._post_results(results, layers, "before_lmdb_commit")
        entries = self.applier.commit()
        self.speculation.committed(self.applier.applied_index, self._isLeader(),
                                   self._last_log_index())
        if entries:
            metrics.child(metrics.apply_batch_entries, self._label).observe(entries)
            metrics.child(metrics.apply_batch_seconds, self._label).observe(self.applier.last_batch_duration_s)
        if results and not early:
            self._post_results(results, (), "after_lmdb_commit")

    def _post_results(self, results: list, layers, when: str) -> None:
        # One wake-up of the event loop per batch, not per command.
        posted_s = latency_trace.now_s() if latency_trace.enabled else 0.0
        self.loop.call_soon_threadsafe(self._settle_batch, results, layers, posted_s)
        metrics.child(metrics.answered_batches, self._label, when).inc()

    def _write_snapshot(self, tmp_path: str, raft_data) -> None:
        """pysyncobj serializer: [header | pickled raft_data | compacting LMDB copy]."""
        try:
            self._commit_batch()
            applied = self.store.applied_index()
            raft_blob = pickle.dumps(raft_data, protocol=pickle.HIGHEST_PROTOCOL)
            with tempfile.TemporaryDirectory(dir=os.path.dirname(tmp_path)) as copy_dir:
                data_file = self.store.copy_compact(copy_dir)
                with open(tmp_path, "wb") as out, open(data_file, "rb") as src:
                    out.write(_HEADER.pack(SNAPSHOT_MAGIC, applied, len(raft_blob)))
                    out.write(raft_blob)
                    shutil.copyfileobj(src, out, 1024 * 1024)
                    out.flush()
                    os.fsync(out.fileno())
            metrics.snapshots_written.labels(self._label).inc()
            log.info("shard %d: snapshot written at applied index %d", self.shard, applied)
        except Exception:
            log.exception("shard %d: writing a snapshot failed", self.shard)
            raise

    def _load_snapshot(self, path: str):
        """pysyncobj deserializer: adopt the snapshot's LMDB if it is newer than ours."""
        try:
            with open(path, "rb") as f:
                magic, applied, raft_len = _HEADER.unpack(f.read(_HEADER.size))
                if magic != SNAPSHOT_MAGIC:
                    raise ValueError(f"{path} is not a Coda snapshot")
                raft_data = pickle.loads(f.read(raft_len))
                if applied > self.store.applied_index():
                    self._commit_batch()
                    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".mdb")
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(f, out, 1024 * 1024)
                        out.flush()
                        os.fsync(out.fileno())
                    self.store.replace_with(tmp)
                    self.applier.reload()
                    self.speculation.on_step_down()  # a leader never installs one; be sure
                    metrics.snapshot_installs.labels(self._label).inc()
                    log.info("shard %d: installed snapshot at applied index %d", self.shard, applied)
            self.finish_compaction(raft_data[0], raft_data[1])
            return tuple(raft_data)
        except Exception:
            # pysyncobj would swallow this and ack the install with the old log.
            log.critical("shard %d: loading snapshot %s failed; exiting", self.shard, path,
                         exc_info=True)
            logging.shutdown()
            os._exit(71)

    def _settle_batch(self, results: list, layers, posted_s: float = 0.0) -> None:
        # Effects first, and whether or not anyone still waits for the result: a
        # proposer that timed out or was cancelled (its client gave up) must not take
        # the committed command's effects with it. An eager assignment whose dispatch was
        # dropped that way sat on a live supervisor for good (its lease renewed, no new
        # hello to re-queue it): a jepsen queue item never delivered (lose-unsynced-one).
        self.committed.add(layers)  # first: effects and waiters read what they were told
        if latency_trace.enabled:
            _trace_closes(results, posted_s)
        if self.effects_listener is not None:
            for _, result, error in results:
                if (error == FAIL_REASON.SUCCESS and isinstance(result, dict)
                        and "effects" in result):
                    try:
                        self.effects_listener(result["effects"])
                    except Exception:
                        log.exception("shard %d: acting on a command's effects failed",
                                      self.shard)
        _settle_all(results)
        if self.commit_listener is not None:
            self.commit_listener()

    def _on_state_changed(self, old: int, new: int) -> None:
        if new != 2:  # not (or no longer) leading: its pending writes may never commit
            self.speculation.on_step_down()
        log.info("shard %d: %s -> %s", self.shard, ROLE_NAMES.get(old), ROLE_NAMES.get(new))

    def _publish_status(self) -> None:
        now = time.monotonic()
        if now < self._status_due_s:
            return
        self._status_due_s = now + STATUS_PERIOD_S
        raw = self.getStatus()
        leader = raw.get("leader")
        leader_addr = leader.address if leader is not None else None
        if leader_addr != self._last_leader and leader_addr is not None:
            metrics.leader_changes.labels(self._label).inc()
            self._widen_election_range()
        self._last_leader = leader_addr
        applied = self.applier.applied_index
        lbl = self._label
        metrics.raft_role.labels(lbl).set(raw["state"])
        metrics.raft_term.labels(lbl).set(raw["raft_term"])
        metrics.commit_index.labels(lbl).set(raw["commit_idx"])
        metrics.applied_index.labels(lbl).set(applied)
        metrics.log_entries.labels(lbl).set(raw["log_len"])
        metrics.has_quorum.labels(lbl).set(1 if raw.get("has_quorum") else 0)
        # After the gauges: whoever sees this status (cluster status, a test waiting for
        # convergence) then finds the gauges at least as new on a scrape.
        self._status = {
            "role": ROLE_NAMES.get(raw["state"], "follower"), "term": raw["raft_term"],
            "commit_index": raw["commit_idx"], "applied_index": applied,
            "log_length": raw["log_len"], "leader": leader_addr,
            "has_quorum": bool(raw.get("has_quorum")),
        }

    def _widen_election_range(self) -> None:
        """The preferred-leader halves (election_timeouts_s) matter only for the first
        election; after it every replica draws from the whole configured range again.
        Left halved, the two survivors of a leader's kill drew from one half (0.5 s
        wide): split votes, a second election, 3.1-3.6 s to the next commit in about one
        failover in three. pysyncobj reads the range from its conf at each draw (tick
        thread: this runs there)."""
        t = self.cfg.raft
        self._raft_conf.raftMinTimeout = t.election_timeout_min_s
        self._raft_conf.raftMaxTimeout = t.election_timeout_max_s

    # === asyncio thread ================================================================

    def status(self) -> dict:
        return self._status

    def is_leader(self) -> bool:
        """A routing hint only: correctness never depends on it (reads use barriers)."""
        return self._isLeader()

    def leader_raft_address(self) -> str | None:
        leader = self._getLeader()
        return leader.address if leader is not None else None

    def leader_hint(self) -> str | None:
        """The leader's client address, if known."""
        address = self.leader_raft_address()
        node = self.cfg.node_by_raft_address(self.shard, address) if address else None
        return node.client if node else None

    async def propose(self, data: bytes, timeout_s: float = limits.proposal_timeout_s,
                      read_only: bool = False) -> dict:
        """Commit one command; returns its `ok` body or raises the CodaError it produced.

        read_only: the command changes nothing (a barrier), so losing leadership while it
        is in flight may be answered NotLeader at once instead of waiting for the timeout.
        """
        if not self._isLeader():
            raise NotLeader(f"this node does not lead shard {self.shard}",
                            shard=self.shard, leader_hint=self.leader_hint())
        if self._in_flight >= limits.proposals_in_flight_max:
            metrics.rejected_proposals.labels(self._label, "in_flight").inc()
            raise ResourceExhausted(
                f"shard {self.shard} has {self._in_flight} proposals in flight, the limit is "
                f"{limits.proposals_in_flight_max}", shard=self.shard)
        future = self.loop.create_future()
        self._in_flight += 1
        metrics.child(metrics.proposals_in_flight, self._label).set(self._in_flight)
        started_s = time.perf_counter()
        try:
            self._enqueue_proposal(data, future)
            result = await self._outcome(future, timeout_s, read_only)
        except CodaError as exc:
            metrics.child(metrics.proposal_errors, self._label, exc.code).inc()
            raise
        finally:
            self._in_flight -= 1
            metrics.child(metrics.proposals_in_flight, self._label).set(self._in_flight)
            metrics.child(metrics.proposal_seconds, self._label).observe(time.perf_counter() - started_s)
        if "error" in result:
            exc = from_wire(result["error"])
            metrics.child(metrics.proposal_errors, self._label, exc.code).inc()
            raise exc
        return result["ok"]  # its effects were acted on as it settled (_settle_batch)

    def _enqueue_proposal(self, data: bytes, future: asyncio.Future) -> None:
        """Add a command to this turn's batch; the batch leaves at the end of the turn,
        or now if this command would take it past its bounds."""
        if self._proposal_batch and (
                len(self._proposal_batch) >= limits.proposal_batch_commands_max
                or self._proposal_batch_bytes + len(data) > limits.proposal_batch_bytes_max):
            self._send_proposals()
        if not self._proposal_batch:
            self.loop.call_soon(self._send_proposals)
        self._proposal_batch.append((data, future))
        self._proposal_batch_bytes += len(data)

    def _send_proposals(self) -> None:
        batch, self._proposal_batch, self._proposal_batch_bytes = self._proposal_batch, [], 0
        if not batch:
            return  # sent early, when it filled up
        if len(batch) == 1:
            data, future = batch[0]
            self._propose_entry(data, lambda result, error:
                                self._on_result(future, result, error))
        else:
            futures = [future for _, future in batch]
            self._propose_entry(commands.encode_batch([data for data, _ in batch]),
                                lambda result, error:
                                self._on_batch_result(futures, result, error))
        self.wake()
        metrics.child(metrics.proposal_batch_commands, self._label).observe(len(batch))

    def _propose_entry(self, data: bytes, callback) -> None:
        """What `self.apply_entry(data, callback=callback)` does (pysyncobj's @replicated:
        the call (method id, (data,)) pickled, queued for the tick thread), pickled with
        protocol 5 rather than pysyncobj's 2 (flow.raft_wire.PICKLE_PROTOCOL)."""
        if self._apply_entry_id is None:
            self._apply_entry_id = self._methodToID[self._getFuncName("apply_entry")]
        self._applyCommand(pickle_dumps((self._apply_entry_id, (data,))), callback,
                           _COMMAND_TYPE.REGULAR)

    async def _outcome(self, future: asyncio.Future, timeout_s: float, read_only: bool) -> dict:
        """The proposal's result. Its deadline (and, for a read, this node's leadership)
        is checked by one sweep per replica every LEADERSHIP_CHECK_S, not a timer per
        proposal: wait_for and shield cost a task and a handle each (#8)."""
        self._watched[future] = (self.loop.time() + timeout_s, timeout_s, read_only)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(LEADERSHIP_CHECK_S, self._sweep)
        try:
            return await future
        finally:
            self._watched.pop(future, None)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now, leading = self.loop.time(), None
        for future, (deadline_s, timeout_s, read_only) in list(self._watched.items()):
            if future.done():
                continue
            if read_only:
                leading = self._isLeader() if leading is None else leading
                if not leading:
                    future.set_exception(NotLeader(
                        f"this node lost the leadership of shard {self.shard} while a read "
                        "waited", shard=self.shard, leader_hint=self.leader_hint()))
                    continue
            if now >= deadline_s:
                # pysyncobj may still answer later (or never: entries a snapshot covered);
                # _settle ignores a future already done.
                future.set_exception(Indeterminate(
                    f"shard {self.shard}: no outcome within {timeout_s:.1f} s; the command "
                    "may still commit", shard=self.shard))
        if self._watched:
            self._sweep_handle = self.loop.call_later(LEADERSHIP_CHECK_S, self._sweep)

    def _on_result(self, future, result, error) -> None:
        # Tick thread (or the caller's thread for QUEUE_FULL). A success waits for the
        # batch commit so nobody can read LMDB before the write it was told about.
        if error == FAIL_REASON.SUCCESS:
            self._results_after_commit.append((future, result, error))
        else:
            self.loop.call_soon_threadsafe(_settle, future, result, error)

    def _on_batch_result(self, futures: list, result, error) -> None:
        """One entry's outcome for each of its commands (same threads as _on_result)."""
        if error == FAIL_REASON.SUCCESS:
            results = result.get("batch") if isinstance(result, dict) else None
            if not isinstance(results, list) or len(results) != len(futures):
                results = [result] * len(futures)  # the entry as a whole (skipped, malformed)
            self._results_after_commit.extend(
                (future, one, error) for future, one in zip(futures, results))
        else:
            self.loop.call_soon_threadsafe(
                _settle_all, [(future, result, error) for future in futures])

    async def read(self, fn):
        """Run fn(txn) on LMDB after a log barrier: linearizable."""
        await self._barrier()
        with self.committed.read() as txn:
            return fn(txn)

    async def _barrier(self) -> None:
        if len(self._barrier_waiters) >= limits.reads_waiting_max:
            raise ResourceExhausted(f"shard {self.shard}: {len(self._barrier_waiters)} reads "
                                    "waiting for a barrier", shard=self.shard)
        waiter = self.loop.create_future()
        self._barrier_waiters.append(waiter)
        if self._barrier_task is None or self._barrier_task.done():
            self._barrier_task = self.loop.create_task(self._run_barriers())
        await waiter

    async def _run_barriers(self) -> None:
        # Each barrier is proposed after every read it answers arrived: reads that arrive
        # while one is in flight wait for the next.
        while self._barrier_waiters:
            batch = self._barrier_waiters[:limits.reads_per_barrier_max]
            del self._barrier_waiters[:len(batch)]
            try:
                await self.propose(commands.barrier(time_ms=int(time.time() * 1000)),
                                   read_only=True)
                metrics.child(metrics.read_barriers, self._label).inc()
                outcome = None
            except CodaError as exc:
                outcome = exc
            for waiter in batch:
                if waiter.done():
                    continue
                if outcome is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(outcome)

    def queue_depths(self) -> dict[str, int]:
        """Local (possibly stale) queue depths, for metrics and cluster status."""
        try:
            with self.store.read() as txn:
                return queries.queue_depths(txn)
        except Exception:  # a scrape must not fail because one store can't be read now
            log.warning("shard %d: can't read queue depths", self.shard, exc_info=True)
            return {}

    def queue_stats(self, queues_max: int) -> dict[str, tuple[int, int | None]]:
        """queue -> (depth, enqueue time of its oldest entry in ms), local and possibly
        stale, for metrics. Bounded: one seek per queue, at most queues_max queues."""
        try:
            with self.store.read() as txn:
                depths = queries.queue_depths(txn)
                return {queue: (depths[queue], _oldest_enqueued_ms(txn, queue))
                        for queue in sorted(depths)[:queues_max]}
        except Exception:  # a scrape must not fail because one store can't be read now
            log.warning("shard %d: can't read queue stats", self.shard, exc_info=True)
            return {}

    def close(self) -> None:
        self.destroy_synchronous()
        self.close_waker()
        self._commit_batch()
        self.store.close()


def _oldest_enqueued_ms(txn, queue: str) -> int | None:
    """The enqueue time of a queue's first entry: entries are keyed by a sequence number
    that only grows, so the first is the oldest."""
    scan = txn.scan(keys.QUEUES, prefix=keys.queue_prefix(queue))
    try:
        first = next(scan, None)
    finally:
        scan.close()  # close the cursor now, inside the read transaction
    if first is None:
        return None
    enqueued_ms = codec.unpack(first[1]).get("enqueued_ms")
    return enqueued_ms if isinstance(enqueued_ms, int) else None


def _remove_snapshot_leftovers(shard_dir: str) -> None:
    """Temporary files of a snapshot write or install a crash interrupted."""
    for name in os.listdir(shard_dir):
        path = os.path.join(shard_dir, name)
        if name.startswith("raft.snapshot.") and name.endswith(".tmp"):
            os.unlink(path)
        elif name.startswith("tmp") and (name.endswith(".mdb") or os.path.isdir(path)):
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


def _trace_closes(results: list, posted_s: float) -> None:
    settled_s = latency_trace.now_s()
    for _, result, _ in results:
        effects = result.get("effects") if isinstance(result, dict) else None
        for workflow_id in (effects or {}).get("closed", ()):
            latency_trace.stamp("close", workflow_id, posted_s, settled_s)


def _settle_all(results: list) -> None:
    for future, result, error in results:
        _settle(future, result, error)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        future.set_result(result)
    elif error == FAIL_REASON.QUEUE_FULL:
        future.set_exception(ResourceExhausted("the Raft command queue is full"))
    elif error in (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER):
        future.set_exception(NotLeader("leadership was lost before the command was logged"))
    elif error in (FAIL_REASON.DISCARDED, FAIL_REASON.REQUEST_DENIED):
        # DISCARDED: another term's entry took this index: the command surely did not apply.
        future.set_exception(Unavailable("the command was discarded by a leader change"))
    else:  # LEADER_CHANGED, UNKNOWN_OUTCOME
        future.set_exception(Indeterminate("leadership changed while the command was in flight"))
