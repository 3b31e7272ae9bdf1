"""The leader's side of execution for one shard: dispatch, timers, supervisor leases.

Runs on the node's asyncio loop and acts only while this node leads the shard. Every
decision it makes is a proposed command, re-checked by the state machine when it applies
(the dispatcher reads the leader's LMDB without a barrier: a stale read only proposes an
assignment or a timer firing that apply then finds stale and skips).

- Dispatch: supervisors' sessions grant credit; each round, every session with credit
  (in rotating order) gets queue entries of its types, committed in one `assign`, then
  sent as one `dispatches` message built from the committed state.
- Timers: due timers are fired by `fire_timers` (apply checks the stamped time again).
- Leases: a supervisor that has assignments and no live, heartbeating session for its
  lease is expired by `expire_supervisor`. A new leader gives every supervisor that holds
  assignments one full lease of grace, since it cannot know when it was last heard from.
- Effects of committed commands: closed workflows wake `WaitWorkflow` long polls; tasks
  to stop are sent to their supervisor's session; new broadcast versions go to the
  shard's WatchBroadcasts streams (flow.broadcast_watch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from coda.api import flow_pb2 as pb
from coda.errors import CodaError, ResourceExhausted
from coda.flow import commands, limits, metrics
from coda.flow.broadcast_watch import BroadcastWatchers
from coda.flow.dispatches import dispatch_of, split_by_bytes
from coda.flow.replica import ShardReplica
from coda.storage import codec, keys

log = logging.getLogger(__name__)

LEADERSHIP_POLL_S = 0.1
DISPATCH_IDLE_S = 0.25
# The dispatch loop's assignments are named in their effects by this prefix and a uuid
# (eager ones by the request id of the command that made them).
ASSIGN_ID_PREFIX = "assign:"
TIMER_POLL_S = 0.05
LEASE_POLL_S = 0.25


@dataclass
class Session:
    supervisor_id: str
    queues: tuple[str, ...]           # durable queues it takes work from
    credit: int
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    open: bool = True
    # The last pick ran out of credit before its queues ran out of entries: work waits.
    backlogged: bool = False
    # (workflow id, run id) -> the history length last sent to this session: the next
    # workflow task of that run sends only what follows (the supervisor caches the rest).
    history_sent: OrderedDict = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.queue_set = frozenset(self.queues)  # `queues` keeps the pick order

    def history_after(self, item: dict) -> int:
        """Events the supervisor already has of this run (and note what it will have)."""
        run = (item["workflow_id"], item["run_id"])
        after = self.history_sent.pop(run, 0)
        if after > item["history_length"]:
            after = 0
        self.history_sent[run] = item["history_length"]
        while len(self.history_sent) > limits.session_history_runs_max:
            self.history_sent.popitem(last=False)
        return after

    def send(self, message: pb.FlowMessage | None) -> None:
        if self.open:
            self.outbox.put_nowait(message)

    def end(self, leader_hint: str | None) -> None:
        if self.open:
            self.outbox.put_nowait(pb.FlowMessage(not_leader_hint=leader_hint or ""))
            self.outbox.put_nowait(None)
            self.open = False


class ShardDispatcher:
    def __init__(self, replica: ShardReplica, lease_ms: int):
        self.replica = replica
        self.shard = replica.shard
        self.lease_s = lease_ms / 1000
        self.active = False
        self.sessions: dict[str, Session] = {}
        self._heard_s: dict[str, float] = {}      # supervisor -> when last heard (monotonic)
        self._kick = asyncio.Event()
        self._claimed: set[tuple[str, int]] = set()  # queue entries in an assign in flight
        self._assigning: set[asyncio.Task] = set()    # assigns proposed, not yet settled
        self._firing: set[bytes] = set()
        # Assignments made by a command, by its id (a completion's or start's request id,
        # or an `assign`'s dispatch id) -> items, until its proposer settles the credit.
        self._eager_used: dict[str, int] = {}
        # Requests settled before their effects came (the proposer timed out or was
        # cancelled; the command may still commit): their assignments take credit back.
        self._eager_settled: OrderedDict[str, None] = OrderedDict()
        # Assignments committed this loop turn, per session: sent together (the commands
        # of one Raft entry settle in the same turn), in messages bounded by bytes.
        self._eager_out: dict[str, tuple[Session, list]] = {}
        # Assignments sent before their command committed (speculative dispatch of a new
        # run's first workflow task), by request id -> the session sent to: their commit
        # sends them only if that session is gone. Bounded: a start that never commits
        # leaves its entry until it ages out.
        self._sent_early: OrderedDict[str, Session] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future]] = {}
        self._waiting = 0
        self._rotation = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self.broadcast_watchers = BroadcastWatchers(self.shard)
        replica.effects_listener = self.on_effects
        replica.appended_listener = self.on_appended
        replica.commit_listener = self.kick

    # --- leadership ----------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            leading = self.replica.is_leader()
            if leading and not self.active:
                self._activate()
            elif not leading and self.active:
                self._deactivate()
            await asyncio.sleep(LEADERSHIP_POLL_S)

    def _activate(self) -> None:
        self.active = True
        now = time.monotonic()
        with self.replica.committed.read() as txn:
            for raw_key, _ in txn.scan(keys.ASSIGNMENTS):
                sid = raw_key.split(keys.SEP, 1)[0].decode()
                self._heard_s.setdefault(sid, now)
        log.info("shard %d: dispatching as leader (%d supervisors hold work)", self.shard,
                 len(self._heard_s))
        self._tasks = [asyncio.create_task(loop()) for loop in
                       (self._dispatch_loop, self._timer_loop, self._lease_loop)]

    def stop(self) -> None:
        if self.active:
            self._deactivate()

    def _deactivate(self) -> None:
        self.active = False
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        hint = self.replica.leader_hint()
        for session in list(self.sessions.values()):
            session.end(hint)
        self.sessions.clear()
        self._heard_s.clear()
        for task in self._assigning:
            task.cancel()
        self._assigning.clear()
        self._claimed.clear()
        self._firing.clear()
        self._eager_used.clear()
        self._eager_settled.clear()
        self._eager_out.clear()
        self._sent_early.clear()
        self.broadcast_watchers.close_all()
        log.info("shard %d: stopped dispatching (leader now %s)", self.shard, hint)

    # --- sessions ------------------------------------------------------------------------
    def attach(self, supervisor_id: str, queues: tuple[str, ...], credit: int) -> Session:
        old = self.sessions.get(supervisor_id)
        if old is not None:
            old.end(None)  # a reconnect replaces the old stream
        session = Session(supervisor_id, queues, credit)
        self.sessions[supervisor_id] = session
        self.heard(supervisor_id)
        self.kick()
        return session

    def detach(self, session: Session) -> None:
        session.open = False
        if self.sessions.get(session.supervisor_id) is session:
            del self.sessions[session.supervisor_id]

    def heard(self, supervisor_id: str) -> None:
        self._heard_s[supervisor_id] = time.monotonic()

    def add_credit(self, session: Session, slots: int, kick: bool = True) -> None:
        session.credit = min(session.credit + slots, limits.session_credit_max)
        if kick:
            self.kick()

    # --- eager dispatch (flow.sm_supervisors.assign_eagerly) -----------------------------
    def reserve_eager(self, session: Session, wanted: int) -> int:
        """Set aside credit for what a completion (or start) may queue for `session`.
        Nothing while work waits in its queues: then the credit goes to the dispatch loop,
        whose `assign`s carry many items each (eager items travel one completion's worth
        at a time; under a backlog that cost more CPU than the commit it saves). Never the
        last credit: the dispatch loop always gets some, so a queue that fills up is seen
        (backlogged) even while every slot runs work in progress."""
        if session.backlogged or self._less_busy_peer(session):
            return 0
        reserved = max(0, min(wanted, session.credit - 1, limits.eager_items_per_completion_max))
        session.credit -= reserved
        return reserved

    def _less_busy_peer(self, session: Session) -> bool:
        """Another supervisor serving some of the same queues has more spare credit: the
        work goes through the queue, where the dispatch loop's rotation shares it out
        (eager alone would keep every run on the supervisor that started it)."""
        return any(other is not session and other.open and other.credit > session.credit
                   and not other.queue_set.isdisjoint(session.queue_set)
                   for other in self.sessions.values())

    def eager_session(self, queue: str) -> Session | None:
        """The open session with the most spare credit that takes from `queue`, for a
        new run's first workflow task (eager start; reserve_eager decides if it may)."""
        takers = [s for s in self.sessions.values() if s.open and queue in s.queue_set]
        return max(takers, key=lambda s: s.credit, default=None)

    def settle_eager(self, session: Session, request_id: str, reserved: int) -> None:
        """After the completion's proposal: credit it did not use goes back."""
        if request_id in self._eager_used:
            used = self._eager_used.pop(request_id)
        else:  # no effects (yet): if they come later, on_effects takes their credit
            used = 0
            if reserved:
                self._eager_settled[request_id] = None
                while len(self._eager_settled) > limits.eager_settled_remembered_max:
                    self._eager_settled.popitem(last=False)
        if reserved > used:
            self.add_credit(session, reserved - used)

    def kick(self) -> None:
        self._kick.set()

    # --- dispatch ------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), DISPATCH_IDLE_S)
            except TimeoutError:
                pass
            self._kick.clear()
            sessions = [s for s in self.sessions.values() if s.open and s.credit > 0]
            if not sessions:
                continue
            start = next(self._rotation) % len(sessions)
            picks = []
            with self.replica.committed.read() as txn:
                for session in sessions[start:] + sessions[:start]:
                    items = self._pick(txn, session)
                    if items:
                        picks.append((session, items))
            # Pipelined: the next round picks (skipping claimed entries) while these
            # assigns commit, so dispatch is not one commit latency per round. Bounded:
            # past the cap, the loop waits for one to finish.
            for session, items in picks:
                task = asyncio.create_task(self._assign(session, items))
                self._assigning.add(task)
                task.add_done_callback(self._assigning.discard)
            while len(self._assigning) >= limits.assigns_in_flight_max:
                await asyncio.wait(self._assigning, return_when=asyncio.FIRST_COMPLETED)

    def _pick(self, txn, session: Session) -> list[list]:
        wanted = min(session.credit, limits.assign_items_max)
        items = []
        for queue in session.queues:
            for raw_key, _ in txn.scan(keys.QUEUES, prefix=keys.queue_prefix(queue)):
                seq = keys.from_u64(raw_key[-8:])
                if (queue, seq) in self._claimed:
                    continue
                items.append([queue, seq])
                self._claimed.add((queue, seq))
                if len(items) >= wanted:
                    break
            if len(items) >= wanted:
                break
        session.credit -= len(items)
        session.backlogged = len(items) >= wanted
        return items

    async def _assign(self, session: Session, items: list[list]) -> None:
        # What was assigned is sent from the command's effects (on_effects), as eager
        # assignments are, and its credit settled the same way: a late commit (after a
        # timeout here) still sends, and takes back the credit given back below.
        dispatch_id = ASSIGN_ID_PREFIX + uuid.uuid4().hex
        try:
            await self.replica.propose(commands.assign(
                time_ms=now_ms(), supervisor_id=session.supervisor_id, items=items,
                dispatch_id=dispatch_id))
        except CodaError as exc:
            log.warning("shard %d: assign to %s failed: %s", self.shard,
                        session.supervisor_id, exc)
            await asyncio.sleep(0.05)
        finally:
            for queue, seq in items:
                self._claimed.discard((queue, seq))
        used = self._eager_used.get(dispatch_id, 0)
        self.settle_eager(session, dispatch_id, len(items))
        if used < len(items):
            self.kick()

    def on_appended(self, groups: list) -> None:
        """New runs' first workflow tasks, their starts appended to the log and not yet
        committed (flow.speculation): sent now, to a session still open. Their commit
        (on_effects) settles the credit as for any eager assignment, and notes the history
        the session was sent; a start that never commits was a run that never existed,
        and its workflow task's completion is refused as stale."""
        if not self.active:
            return
        for sid, request_id, items, built in groups:
            session = self.sessions.get(sid)
            if session is None or not session.open or any(
                    (item["workflow_id"], item["run_id"]) in session.history_sent
                    for item in items):
                continue  # sent at the commit, to whichever session it then has
            for batch in split_by_bytes(built, limits.dispatch_message_bytes_max):
                session.send(pb.FlowMessage(dispatches=pb.Dispatches(items=batch)))
            self._sent_early[request_id] = session
            while len(self._sent_early) > limits.dispatched_early_remembered_max:
                self._sent_early.popitem(last=False)
            label = str(self.shard)
            metrics.child(metrics.dispatched, label).inc(len(items))
            metrics.child(metrics.dispatched_before_commit, label).inc(len(items))

    def _send_eager(self) -> None:
        out, self._eager_out = self._eager_out, {}
        for session, assigned in out.values():
            for start in range(0, len(assigned), limits.assign_items_max):
                self._send_assigned(session, assigned[start:start + limits.assign_items_max])

    def _send_assigned(self, session: Session, assigned: list[dict]) -> None:
        """One `dispatches` message for committed assignments, built from the committed
        state (the caller runs after the commit)."""
        budget = [limits.task_history_bytes_per_message_max]
        with self.replica.committed.read() as txn:
            dispatches = [
                dispatch_of(txn, item, session.history_after(item)) if item["kind"] == "wft"
                else _with_run_history(txn, session, item, dispatch_of(txn, item), budget)
                for item in assigned]
        for items in split_by_bytes(dispatches, limits.dispatch_message_bytes_max):
            session.send(pb.FlowMessage(dispatches=pb.Dispatches(items=items)))
            metrics.child(metrics.dispatch_batch_items, str(self.shard)).observe(len(items))
        metrics.child(metrics.dispatched, str(self.shard)).inc(len(assigned))

    # --- timers --------------------------------------------------------------------------
    async def _timer_loop(self) -> None:
        while True:
            due, next_fire_ms = self._due_timers()
            if due:
                self._firing.update(due)
                try:
                    # One command per timer kind: apply answers how many fired, so the
                    # count per kind (retries, timeouts) is exact. Raft batches them.
                    await asyncio.gather(*(self._fire(kind, timer_keys)
                                           for kind, timer_keys in by_kind(due).items()))
                finally:
                    self._firing.difference_update(due)
                continue
            wait_s = TIMER_POLL_S if next_fire_ms is None else max(
                0.0, min(TIMER_POLL_S, (next_fire_ms - now_ms()) / 1000))
            await asyncio.sleep(wait_s)

    async def _fire(self, kind: str, timer_keys: list[bytes]) -> None:
        time_ms = now_ms()
        label = str(self.shard)
        for key in timer_keys:
            metrics.timer_lag_seconds.labels(label).observe(
                max(0, time_ms - keys.timer_fire_ms(key)) / 1000)
        try:
            ok = await self.replica.propose(commands.fire_timers(time_ms=time_ms,
                                                                 timer_keys=timer_keys))
        except CodaError as exc:
            log.warning("shard %d: firing %s timers failed: %s", self.shard, kind, exc)
            await asyncio.sleep(TIMER_POLL_S)
            return
        metrics.count_timers_fired(label, kind, ok.get("fired", 0))

    def _due_timers(self) -> tuple[dict[bytes, str], int | None]:
        """Due timers not being fired already (key -> kind, in due order), and when the
        next one is due if none are."""
        due: dict[bytes, str] = {}
        current_ms = now_ms()
        with self.replica.committed.read() as txn:
            for key, raw in txn.scan(keys.TIMERS):
                fire_ms = keys.timer_fire_ms(key)
                if fire_ms > current_ms:
                    return due, fire_ms
                if key not in self._firing:
                    due[bytes(key)] = timer_kind(raw)
                if len(due) >= limits.timers_per_fire_max:
                    break
        return due, None

    # --- leases --------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_POLL_S)
            now = time.monotonic()
            for sid, heard_s in list(self._heard_s.items()):
                if now - heard_s <= self.lease_s:
                    continue
                session = self.sessions.get(sid)
                if session is not None:
                    session.end(None)
                    self.detach(session)
                await self._expire(sid)

    async def _expire(self, supervisor_id: str) -> None:
        try:
            ok = await self.replica.propose(commands.expire_supervisor(
                time_ms=now_ms(), supervisor_id=supervisor_id))
        except CodaError as exc:
            log.warning("shard %d: expiring supervisor %s failed: %s", self.shard,
                        supervisor_id, exc)
            return
        if supervisor_id not in self.sessions:
            self._heard_s.pop(supervisor_id, None)
        metrics.supervisors_expired.labels(str(self.shard)).inc()
        log.warning("shard %d: supervisor %s lease expired; %d items re-queued", self.shard,
                    supervisor_id, ok["requeued"])
        self.kick()

    # --- effects and waiters -------------------------------------------------------------
    def on_effects(self, effects: dict) -> None:
        for sid, request_id, assigned in effects.get("assigned", ()):
            # Runs before the completion's propose() returns: settle_eager sees the count.
            # After it (the proposer gave up): the credit settle_eager gave back is taken.
            session = self.sessions.get(sid)
            sent_early = self._sent_early.pop(request_id, None) if self._sent_early else None
            if request_id in self._eager_settled:
                del self._eager_settled[request_id]
                if session is not None:
                    session.credit = max(0, session.credit - len(assigned))
            else:
                self._eager_used[request_id] = len(assigned)
            if session is not None:
                if not request_id.startswith(ASSIGN_ID_PREFIX):
                    metrics.child(metrics.eager_dispatched, str(self.shard)).inc(len(assigned))
                if sent_early is session and session.open:  # on_appended sent them
                    for item in assigned:  # what it now holds: the run's next task sends less
                        session.history_after(item)
                    continue
                if not self._eager_out:
                    asyncio.get_running_loop().call_soon(self._send_eager)
                self._eager_out.setdefault(sid, (session, []))[1].extend(assigned)
            # else: the session ended; the supervisor's next hello re-queues what it
            # never received (flow.sm_supervisors.register), as for a lost `assign`.
        if effects.get("history_warnings"):
            metrics.history_warnings.labels(str(self.shard)).inc(len(effects["history_warnings"]))
        for name, version, found, value, updated_ms in effects.get("broadcast", ()):
            self.broadcast_watchers.publish(name, version, found, value, updated_ms)
        for workflow_id in effects.get("closed", ()):
            for waiter in self._waiters.pop(workflow_id, ()):
                if not waiter.done():
                    waiter.set_result(None)
        by_supervisor: dict[str, list] = {}
        for sid, wid, run_id, key, attempt in effects.get("cancel", ()):
            by_supervisor.setdefault(sid, []).append(pb.RunningItem(
                workflow_id=wid, run_id=run_id, task_key=key, attempt=attempt))
        for sid, items in by_supervisor.items():
            session = self.sessions.get(sid)
            if session is not None:
                session.send(pb.FlowMessage(cancel=pb.RunningItems(items=items)))

    def closed_waiter(self, workflow_id: str) -> asyncio.Future:
        self._waiting += 1
        if self._waiting > limits.workflow_waiters_max:
            self._waiting -= 1
            raise ResourceExhausted(f"shard {self.shard} has {limits.workflow_waiters_max} "
                                    "result waits open; poll describe instead", shard=self.shard)
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(workflow_id, set()).add(future)
        metrics.child(metrics.result_waiters, str(self.shard)).set(self._waiting)
        return future

    def drop_waiter(self, workflow_id: str, future: asyncio.Future) -> None:
        waiters = self._waiters.get(workflow_id)
        self._waiting -= 1
        metrics.child(metrics.result_waiters, str(self.shard)).set(self._waiting)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[workflow_id]


def now_ms() -> int:
    return int(time.time() * 1000)


def timer_kind(raw: bytes) -> str:
    """A stored timer's kind (flow.sm_common.TIMER_*), for counting; "other" if unreadable."""
    try:
        kind = codec.unpack(raw).get("kind")
    except Exception:  # a metric must not stop timers firing: apply judges the timer
        return "other"
    return kind if isinstance(kind, str) else "other"


def by_kind(due: dict[bytes, str]) -> dict[str, list[bytes]]:
    groups: dict[str, list[bytes]] = {}
    for key, kind in due.items():
        groups.setdefault(kind, []).append(key)
    return groups


def _with_run_history(txn, session: Session, item: dict, dispatch: pb.Dispatch,
                      budget: list[int]) -> pb.Dispatch:
    """A task dispatched to a session that holds its run's history (it ran a workflow
    task of the run) carries the events since, through this task's start: its
    supervisor can then run the next workflow task on the task's result at once and send
    both together (Completion.then_workflow_task, sm_supervisors.chained_wft_refusal).
    Not for a task with a heartbeat timeout (its result may wait for that run, and must
    not miss a heartbeat deadline meanwhile). Bounded per task and per message (`budget`,
    bytes left); a run with more news than that gets none: the chain is only a shortcut."""
    run = (item["workflow_id"], item["run_id"])
    after = session.history_sent.get(run)
    if after is None or dispatch.heartbeat_timeout_ms:
        return dispatch
    # What one gRPC message leaves beside the task's own args and heartbeat details.
    room_bytes = (limits.grpc_message_bytes_max - limits.command_envelope_bytes_max
                  - len(dispatch.input) - len(dispatch.heartbeat_details))
    events, size_bytes, last_event_id = [], 0, after  # as stored: sent without decoding
    for key, raw in txn.scan(keys.HISTORY, prefix=keys.history_prefix(*run),
                             start=keys.history_key(*run, after + 1)):
        size_bytes += len(raw)
        if (len(events) >= limits.task_history_events_max
                or size_bytes > min(limits.task_history_bytes_max, budget[0], room_bytes)):
            return dispatch
        events.append(raw)
        last_event_id = keys.history_event_id(key)
    budget[0] -= size_bytes
    if events:
        session.history_sent[run] = last_event_id
        session.history_sent.move_to_end(run)
        dispatch.history = codec.pack_array_of_packed(events)
        dispatch.history_after_event_id = after
    return dispatch
