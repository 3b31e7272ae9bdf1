"""The supervisor process: worker processes for one module, sessions with Flow's shard leaders.

    run_supervisor(addresses, module, workers=...)   blocking; returns the exit code
      └─ Supervisor.run
           ├─ WorkerPool (coda.supervisor.pool): spawns workers; items in, done/heartbeat out
           ├─ ShardSession per shard (coda.supervisor.sessions): the Session streams
           ├─ CreditLedger, one CompletionBatcher per shard (pure, in sessions)
           └─ HealthServer (optional): /health and /metrics on 127.0.0.1

An item's life: Flow dispatches it (one credit) → it gets a fresh local id and goes to
the pool → the worker answers `done` → a Completion with a fresh request id joins its
shard's batcher and one slot is owed back to the shard → batched out → acked or rejected
by Flow (dropped) or unanswered when the stream breaks (resent on the next stream, and
listed in the hello's `running`, so Flow neither re-queues nor forgets it).

Shutdown (SIGTERM/SIGINT; a second signal hurries it): grant no more credit and fail at
once what Flow still dispatches; let in-flight items finish within `drain_s`; cancel and
report the rest as failures "SupervisorShutdown" (retryable); wait (bounded) for Flow to
answer every completion; stop the workers; close the sessions.

Exit codes: 0 after a clean shutdown, 1 if the workers could not start, 2 for a bad
argument (a module that can't be found, workers < 1, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.machinery
import itertools
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from coda.api import flow_pb2 as pb
from coda.errors import ConfigError, PayloadError
from coda.flow import limits
from coda.process import tune_process
from coda.storage import codec
from coda.supervisor.broadcasts import SupervisorReads
from coda.supervisor.chaining import CHAIN_WAIT_S, DEADLINE_MARGIN_S, Chains, attach
from coda.supervisor.health import HealthServer
from coda.supervisor.history_cache import HistoryCache
from coda.supervisor.metrics import SupervisorMetrics
from coda.supervisor.sessions import (Backoff, ChannelCache, CompletionBatcher, CreditLedger,
                                      ShardMap, ShardSession)

log = logging.getLogger(__name__)

# A slot is held from dispatch until the completion's flush, and each cycle includes an
# assign commit (~25-35 ms under load): 32 per worker capped W-seq at ~180 wf/s with 4
# shards (16 slots a shard), 128 gave ~230 (bench/bench_execution.py --slots). Items are
# cheap while they wait (async tasks; sync ones queue for the 32 task threads), and
# Temporal's workers default to 1,000 concurrent activities.
SLOTS_PER_WORKER = 128
DRAIN_S_DEFAULT = 30.0
ACK_WAIT_S = limits.proposal_timeout_s + 5.0  # at shutdown, for Flow to answer what we sent
POOL_STOP_S = 5.0
POOL_START_S = 120.0          # workers import the user's module: allow a slow import
SHUTDOWN_POLL_S = 0.05
# A completion must fit one replicated command (the shard commits it in one).
COMPLETION_BYTES_MAX = limits.command_bytes_max - limits.command_envelope_bytes_max
# Task heartbeat details carried by one lease heartbeat (each is also <= the payload limit).
HEARTBEAT_DETAILS_BYTES_MAX = COMPLETION_BYTES_MAX
FAILURE_MESSAGE_CHARS_MAX = 8 * 1024
FAILURE_STACK_CHARS_MAX = 32 * 1024
BUILD_ID_FILES_MAX = 10_000
SHUTDOWN_ERROR = "SupervisorShutdown"
TIMEOUT_ERROR = "StartToCloseTimeout"

assert COMPLETION_BYTES_MAX >= limits.payload_bytes_max
assert FAILURE_MESSAGE_CHARS_MAX + FAILURE_STACK_CHARS_MAX < limits.command_envelope_bytes_max * 4


# ===========================================================================================
# Flow <-> worker conversions (pure)
# ===========================================================================================

@dataclass
class Item:
    """One dispatched item this supervisor runs, under its local id."""
    shard: int
    workflow_id: str
    run_id: str
    task_key: str              # "" for a workflow task
    attempt: int
    type_name: str
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    timed_out_s: float | None = None    # start_to_close_timeout passed: cancelled by us
    deadline_s: float | None = None     # monotonic start_to_close deadline, if it has one
    heartbeat_dropped: bool = False
    received_s: float = field(default_factory=time.monotonic)  # for its duration (metrics)

    @property
    def ref(self) -> tuple:
        return (self.shard, self.workflow_id, self.run_id, self.task_key, self.attempt)

    @property
    def is_workflow_task(self) -> bool:
        return not self.task_key

    def __str__(self) -> str:
        what = "workflow task" if self.is_workflow_task else f"task {self.type_name} {self.task_key}"
        return f"{what} of {self.workflow_id}/{self.run_id} attempt {self.attempt}"

    def running_item(self) -> pb.RunningItem:
        return pb.RunningItem(workflow_id=self.workflow_id, run_id=self.run_id,
                              task_key=self.task_key, attempt=self.attempt)


def outcome_of(completion: pb.Completion) -> str:
    """How an item ended, for coda_supervisor_items_finished_total (a fixed set)."""
    if completion.WhichOneof("outcome") != "failure":
        return "completed"
    return {TIMEOUT_ERROR: "timed_out", SHUTDOWN_ERROR: "shutdown",
            "WorkerDied": "worker_died"}.get(completion.failure.error_type, "failed")


def item_from_dispatch(shard: int, dispatch: pb.Dispatch) -> Item:
    return Item(shard, dispatch.workflow_id, dispatch.run_id, dispatch.task_key,
                dispatch.attempt, dispatch.type_name)


def worker_message(dispatch: pb.Dispatch, item_id: str, history: list | None = None) -> dict:
    """The supervisor -> worker message for a dispatch (docs/execution-protocol.md).
    A workflow task's `history` is the whole history (the dispatch may carry a tail only)."""
    if dispatch.task_key:
        return {"op": "task", "id": item_id, "task": dispatch.type_name,
                "args": bytes(dispatch.input), "workflow_id": dispatch.workflow_id,
                "run_id": dispatch.run_id, "key": dispatch.task_key,
                "attempt": dispatch.attempt, "idempotency_key": dispatch.idempotency_key,
                "heartbeat_details": bytes(dispatch.heartbeat_details) or None}
    return {"op": "workflow_task", "id": item_id, "workflow_type": dispatch.type_name,
            "workflow_id": dispatch.workflow_id, "run_id": dispatch.run_id,
            "workflow_attempt": dispatch.workflow_attempt,
            "start_time_ms": dispatch.start_time_ms, "input": bytes(dispatch.input),
            "history": history if history is not None else history_tail(dispatch)}


def history_tail(dispatch: pb.Dispatch) -> list:
    """The events a workflow task's dispatch carries; PayloadError if not a msgpack list."""
    if not dispatch.history:
        return []
    events = codec.decode_payload(bytes(dispatch.history),
                                  what=f"history of workflow {dispatch.workflow_id!r}")
    if not isinstance(events, list):
        raise PayloadError(f"history of workflow {dispatch.workflow_id!r} is a "
                           f"{type(events).__name__}, not a list", what="history")
    return events


def failure(error_type: str, message: str, *, stack: str = "",
            non_retryable: bool = False) -> pb.Failure:
    return pb.Failure(error_type=str(error_type)[:limits.type_name_bytes_max],
                      message=_clip(str(message), FAILURE_MESSAGE_CHARS_MAX),
                      stack=_clip(str(stack or ""), FAILURE_STACK_CHARS_MAX),
                      non_retryable=bool(non_retryable))


def completion_for(item: Item, done: dict, *, request_id: str,
                   payload_bytes_max: int) -> pb.Completion:
    """The Completion for a worker's `done` message; what can't be sent becomes a failure."""
    completion = pb.Completion(request_id=request_id, workflow_id=item.workflow_id,
                               run_id=item.run_id, task_key=item.task_key,
                               attempt=item.attempt)
    error = done.get("error")
    what = f"workflow task of {item.workflow_id!r}" if item.is_workflow_task else \
        f"task {item.type_name!r} ({item.task_key}) of {item.workflow_id!r}"
    if error is not None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        completion.failure.CopyFrom(failure(
            error.get("type") or "Error", error.get("message") or "", stack=error.get("stack") or "",
            non_retryable=bool(error.get("non_retryable"))))
    elif item.is_workflow_task:
        commands = done.get("commands")
        if not isinstance(commands, list):
            completion.failure.CopyFrom(failure("ProtocolError", f"the worker answered the "
                                                f"{what} without a command list"))
        else:
            completion.workflow_commands = codec.pack(commands)
    else:
        result = done.get("result")
        if not isinstance(result, (bytes, bytearray)):
            completion.failure.CopyFrom(failure("ProtocolError", f"the worker answered {what} "
                                                f"without result bytes"))
        elif len(result) > payload_bytes_max:
            completion.failure.CopyFrom(failure(
                "PayloadError", f"the result of {what} is {len(result)} bytes encoded, over "
                f"the limit of {payload_bytes_max} bytes", non_retryable=True))
        else:
            completion.result = bytes(result)
    if completion.ByteSize() > COMPLETION_BYTES_MAX:
        size = completion.ByteSize()
        completion.failure.CopyFrom(failure(
            "PayloadError", f"the completion of {what} is {size} bytes, over the limit of "
            f"{COMPLETION_BYTES_MAX} bytes", non_retryable=True))
    return completion


def _clip(text: str, chars_max: int) -> str:
    return text if len(text) <= chars_max else text[:chars_max - 20] + " ... [truncated]"


# ===========================================================================================
# Identity: supervisor id and build id
# ===========================================================================================

def default_supervisor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def module_source_files(module: str, search_path: list[str] | None = None) -> tuple[Path, list[Path]]:
    """The root and the source files of `module` (every .py of a package), found the way
    `python -m` in this directory would find them, without importing anything."""
    spec, parent_path = None, None
    for depth, part in enumerate(module.split(".")):
        if not part.isidentifier():
            raise ConfigError(f"{module!r} is not a module name", field="module")
        name = ".".join(module.split(".")[:depth + 1])
        spec = _find_spec(name, parent_path, search_path)
        if spec is None:
            raise ConfigError(f"module {name!r} not found (searched the current directory and "
                              f"sys.path)", field="module")
        parent_path = list(spec.submodule_search_locations or [])
    assert spec is not None
    if spec.submodule_search_locations:
        roots = [Path(p) for p in spec.submodule_search_locations]
        files = sorted(f for root in roots for f in root.rglob("*.py")
                       if "__pycache__" not in f.parts)
        return roots[0], files
    if spec.has_location and spec.origin:
        origin = Path(spec.origin)
        return origin.parent, [origin]
    raise ConfigError(f"module {module!r} has no source file to hash; pass a build id",
                      field="module")


def _find_spec(name: str, parent_path: list[str] | None, search_path: list[str] | None):
    """What `import name` would find, given the parent package's __path__ (None: top
    level), without importing the parents the way importlib.util.find_spec does. The top
    level is searched from the current directory first, as `python -m` does in a worker;
    `search_path` replaces that search (tests)."""
    if search_path is not None:
        return importlib.machinery.PathFinder.find_spec(name, parent_path or search_path)
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            spec = finder.find_spec(name, parent_path if parent_path is not None
                                    else [os.getcwd(), *sys.path])
        elif hasattr(finder, "find_spec"):
            try:  # editable installs, import hooks: third-party code
                spec = finder.find_spec(name, parent_path)
            except Exception:
                spec = None
        else:
            spec = None
        if spec is not None:
            return spec
    return None


def module_build_id(module: str, search_path: list[str] | None = None) -> str:
    """blake2b over the module's source files (relative names and contents)."""
    root, files = module_source_files(module, search_path)
    if len(files) > BUILD_ID_FILES_MAX:
        raise ConfigError(f"module {module!r} has {len(files)} source files, over "
                          f"{BUILD_ID_FILES_MAX}: pass a build id", field="module")
    digest = hashlib.blake2b(digest_size=16)
    digest.update(module.encode() + b"\0")
    for path in files:
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:  # a namespace package spread over several roots
            name = path.as_posix()
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.blake2b(path.read_bytes(), digest_size=32).digest())
    return digest.hexdigest()


# ===========================================================================================
# The supervisor
# ===========================================================================================

class Supervisor:
    """Owns the pool and the per-shard bookkeeping; the SessionHost of every ShardSession."""

    def __init__(self, addresses: list[str], module: str, *, workers: int, slots: int,
                 build_id: str, supervisor_id: str, drain_s: float = DRAIN_S_DEFAULT,
                 pool=None, pool_factory=None, metrics: SupervisorMetrics | None = None,
                 rng: random.Random | None = None):
        assert addresses and workers >= 1 and slots >= 1 and drain_s >= 0
        self.addresses = list(addresses)
        self.module = module
        self.workers = workers
        self.slots = slots
        self.build_id = build_id
        self.supervisor_id = supervisor_id
        self.drain_s = drain_s
        self.metrics = metrics or SupervisorMetrics()
        self.state = "starting"          # starting, running, draining, stopped
        self.workflow_types: list[str] = []
        self.upgradable_workflow_types: list[str] = []
        self.task_types: list[str] = []
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        self._items: dict[str, Item] = {}          # local id -> item
        self._by_ref: dict[tuple, str] = {}        # Item.ref -> local id
        self._task_heartbeats: dict[str, bytes] = {}  # local id -> latest details
        self.ledger: CreditLedger | None = None
        self.batchers: list[CompletionBatcher] = []
        self.sessions: list[ShardSession] = []
        self._payload_bytes_max: list[int] = []
        self._channels = ChannelCache()
        self.histories = HistoryCache()
        self.chains = Chains(self.histories)
        self._history_client = None
        self.reads: SupervisorReads | None = None
        self._fetches: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        self.metrics.in_flight.set_function(lambda: len(self._items))
        if pool is None:
            if pool_factory is None:
                from coda.supervisor.pool import WorkerPool as pool_factory
            pool = pool_factory(module, workers, on_event=self.on_event,
                                payload_bytes_max=limits.payload_bytes_default)
        self.pool = pool
        self.metrics.watch_pool(pool)
        self.metrics.watch_supervisor(self)
        self.metrics.info.info({"supervisor_id": str(supervisor_id), "build_id": str(build_id),
                                "module": str(module)})

    # --- lifecycle ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """The first call drains gracefully; the next hurries the drain."""
        if self._stop.is_set():
            log.warning("second stop request: not waiting for in-flight work")
            self._hurry.set()
        else:
            log.info("stop requested: draining")
            self._stop.set()

    async def run(self) -> int:
        try:
            if not await self._start_pool():
                return 1
            if await self._connect():
                self.state = "running"
                await self._stop.wait()
            await self._drain()
            return 0
        finally:
            await self._close()

    async def _start_pool(self) -> bool:
        log.info("supervisor %s starting %d workers for %s (build %s, %d slots)",
                 self.supervisor_id, self.workers, self.module, self.build_id, self.slots)
        try:
            ready = await self._unless_stopped(asyncio.wait_for(self.pool.start(), POOL_START_S))
        except Exception as exc:
            log.error("workers for %s did not start: %s", self.module, str(exc) or type(exc).__name__)
            return False
        if ready is None:
            return True  # stopped while starting: nothing ran, _drain has nothing to do
        self.workflow_types = sorted(ready.get("workflow_types") or [])
        self.task_types = sorted(ready.get("task_types") or [])
        self.upgradable_workflow_types = sorted(ready.get("upgradable_workflow_types") or [])
        if not self.workflow_types and not self.task_types:
            log.warning("module %s declares no @coda.workflow or @coda.task: this supervisor "
                        "will receive nothing", self.module)
        log.info("workers ready (pids %s): workflows %s, tasks %s", self.pool.worker_pids(),
                 self.workflow_types, self.task_types)
        return True

    async def _connect(self) -> bool:
        """Fetch the shard map (retrying until it comes or a stop) and open the sessions."""
        if self._stop.is_set():
            return False
        shard_map = ShardMap(self.addresses, self._channels, self._rng)
        backoff = Backoff(self._rng)
        for tries in itertools.count(1):
            if await shard_map.refresh() and shard_map.shard_count:
                break
            if tries == 1 or tries % 20 == 0:
                log.warning("no Flow node at %s answered GetShardMap; retrying",
                            ",".join(self.addresses))
            if await self._unless_stopped(asyncio.sleep(backoff.next_s()), default=False) is False:
                return False
        self.attach_shards(shard_map.shard_count)
        log.info("%d shards; %d slots per shard", shard_map.shard_count, self.ledger.share)
        for shard in range(shard_map.shard_count):
            session = ShardSession(shard, self, shard_map, self._channels, self._rng,
                                   on_reconnect=self._on_session_ended)
            self.sessions.append(session)
            self._tasks.append(asyncio.create_task(session.run(), name=f"session-{shard}"))
        return True

    def attach_shards(self, shard_count: int) -> None:
        """Per-shard bookkeeping, once the shard count is known."""
        assert self.ledger is None and shard_count >= 1
        self.ledger = CreditLedger(self.slots, shard_count)
        self.batchers = [CompletionBatcher() for _ in range(shard_count)]
        if hasattr(self.pool, "send_all"):  # test doubles of the pool may not relay reads
            self.reads = SupervisorReads(client_factory=self.flow_client,
                                         send_all=self.pool.send_all, metrics=self.metrics,
                                         shard_count=shard_count)
        self._payload_bytes_max = [limits.payload_bytes_default] * shard_count
        for shard in range(shard_count):
            self.metrics.init_shard(shard)

    async def _drain(self) -> None:
        self.state = "draining"
        if self.ledger is not None:
            self.ledger.stop()
        if self._items:
            log.info("draining: %d items in flight, up to %.1f s", len(self._items), self.drain_s)
            await self._wait_until(lambda: not self._items, self.drain_s)
        self._flush_chains()
        if self._items:
            log.warning("%d items still running after the drain: reported as %s",
                        len(self._items), SHUTDOWN_ERROR)
            for item_id in list(self._items):
                self._cancel_in_pool(item_id)
                self._fail(item_id, SHUTDOWN_ERROR,
                           f"supervisor {self.supervisor_id} shut down before it finished")
        self._wake_all()
        if any(self.batchers):
            await self._wait_until(lambda: not any(self.batchers), ACK_WAIT_S)
        unanswered = sum(len(b) for b in self.batchers)
        if unanswered:
            log.warning("%d completions unanswered by Flow at shutdown: their items will run "
                        "again", unanswered)

    async def _close(self) -> None:
        self.state = "stopped"
        try:
            await self.pool.stop(POOL_STOP_S)
        except Exception:
            log.exception("stopping the workers failed")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.reads is not None:
            await self.reads.close()
        await self._channels.close()
        if self._history_client is not None:
            await self._history_client.close()
        log.info("supervisor %s stopped", self.supervisor_id)

    async def _wait_until(self, predicate, limit_s: float) -> bool:
        deadline_s = time.monotonic() + limit_s
        while not predicate():
            if time.monotonic() >= deadline_s or self._hurry.is_set():
                return False
            await asyncio.sleep(SHUTDOWN_POLL_S)
        return True

    async def _unless_stopped(self, awaitable, default=None):
        """The awaitable's result, or `default` if a stop is requested first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        return default if work.cancelled() else work.result()

    # --- SessionHost: what the shard sessions ask and report ---------------------------

    def hello(self, shard: int) -> pb.SupervisorHello:
        batcher = self.batchers[shard]
        resent = batcher.requeue_unacked()  # a new stream: everything unanswered goes again
        if resent:
            log.info("shard %d: %d completions sent before and unanswered: sending again",
                     shard, resent)
            self.metrics.child(self.metrics.completions_resent, str(shard)).inc(resent)
        slots = self.ledger.on_hello(shard, blocked=batcher.full)
        self.metrics.child(self.metrics.credit_granted, str(shard)).inc(slots)
        running = [item.running_item() for item in self._items.values() if item.shard == shard]
        running += [pb.RunningItem(workflow_id=c.workflow_id, run_id=c.run_id,
                                   task_key=c.task_key, attempt=c.attempt)
                    for c in batcher.pending()]
        return pb.SupervisorHello(
            supervisor_id=self.supervisor_id, build_id=self.build_id,
            workflow_types=self.workflow_types, task_types=self.task_types, slots=slots,
            shard=shard, running=running,
            upgradable_workflow_types=self.upgradable_workflow_types)

    def on_accepted(self, shard: int, accepted: pb.SessionAccepted, address: str) -> None:
        if accepted.payload_bytes_max:
            self._payload_bytes_max[shard] = accepted.payload_bytes_max
        self.metrics.child(self.metrics.connected, str(shard)).set(1)
        self._wake(shard)

    def on_disconnected(self, shard: int) -> None:
        self.metrics.child(self.metrics.connected, str(shard)).set(0)

    def _on_session_ended(self, shard: int) -> None:
        self.metrics.child(self.metrics.reconnects, str(shard)).inc()

    def on_dispatches(self, shard: int, dispatches) -> None:
        self.metrics.child(self.metrics.dispatches, str(shard)).inc(len(dispatches))
        self.metrics.child(self.metrics.dispatch_batch_items, str(shard)).observe(len(dispatches))
        for dispatch in dispatches:
            self._start(shard, dispatch)

    def on_cancel(self, shard: int, running_items) -> None:
        for wanted in running_items:
            for item_id in self._find(shard, wanted):
                log.info("shard %d: Flow cancels %s", shard, self._items[item_id])
                self._cancel_in_pool(item_id)

    def on_acks(self, shard: int, acks: pb.CompletionAcks) -> None:
        batcher = self.batchers[shard]
        acked = batcher.ack_timed(acks.request_ids)
        self.metrics.child(self.metrics.completions_acked, str(shard)).inc(len(acked))
        now_s = time.monotonic()
        ack_seconds = self.metrics.child(self.metrics.completion_ack_seconds, str(shard))
        for _, sent_s in acked:
            if sent_s is not None:
                ack_seconds.observe(now_s - sent_s)
        reasons = {r.request_id: r.reason for r in acks.rejected}
        for completion in batcher.reject(reasons):
            log.warning("shard %d: Flow rejected the completion of %s/%s %s attempt %d: %s",
                        shard, completion.workflow_id, completion.run_id,
                        completion.task_key or "(workflow task)", completion.attempt,
                        reasons[completion.request_id] or "no reason given")
            self.metrics.child(self.metrics.completions_rejected, str(shard)).inc()
        self.metrics.child(self.metrics.unacked, str(shard)).set(len(batcher))

    def outgoing(self, shard: int, now_s: float) -> list[pb.SupervisorMessage]:
        """Due completion batches, then the credit freed since the last flush. Credit rides
        in the last completion batch of the flush (its `slots`: Flow sets it aside for what
        these completions queue for us, eager dispatch, before queued work takes it); it
        goes alone only when no completion waits (credit released by acks, a duplicate
        dispatch)."""
        batcher = self.batchers[shard]
        stale = batcher.requeue_stale(now_s)
        if stale:
            log.info("shard %d: %d completions unanswered for %.0f s: sending again", shard,
                     stale, batcher.ack_timeout_s)
            self.metrics.child(self.metrics.completions_resent, str(shard)).inc(stale)
        messages = []
        while batcher.due(now_s):
            batch = batcher.take_batch(now_s)
            self.metrics.child(self.metrics.completions_sent, str(shard)).inc(len(batch))
            self.metrics.child(self.metrics.completion_batch_items, str(shard)).observe(len(batch))
            messages.append(pb.SupervisorMessage(completions=pb.CompletionBatch(completions=batch)))
        if messages or not batcher.unsent:
            grant = self.ledger.take_grant(shard, blocked=batcher.full)
        else:
            grant = 0
        if grant:
            self.metrics.child(self.metrics.credit_granted, str(shard)).inc(grant)
            if messages:
                messages[-1].completions.slots = grant
            else:
                messages.append(pb.SupervisorMessage(credit=pb.Credit(slots=grant)))
        return messages

    def next_due_s(self, shard: int) -> float | None:
        return self.batchers[shard].next_due_s()

    def heartbeat(self, shard: int) -> pb.SupervisorMessage:
        """The lease heartbeat, with the latest details of each task heartbeat since the
        last one (bounded: what doesn't fit waits for the next heartbeat)."""
        tasks, size_bytes = [], 0
        for item_id in [i for i in self._task_heartbeats if self._items[i].shard == shard]:
            item, details = self._items[item_id], self._task_heartbeats[item_id]
            if size_bytes + len(details) > HEARTBEAT_DETAILS_BYTES_MAX and tasks:
                break
            del self._task_heartbeats[item_id]
            size_bytes += len(details)
            tasks.append(pb.TaskHeartbeat(workflow_id=item.workflow_id, run_id=item.run_id,
                                          task_key=item.task_key, attempt=item.attempt,
                                          details=details))
        self.metrics.child(self.metrics.heartbeats_sent, str(shard)).inc()
        return pb.SupervisorMessage(heartbeat=pb.Heartbeat(sent_ms=int(time.time() * 1000),
                                                           tasks=tasks))

    # --- items -------------------------------------------------------------------------

    def _start(self, shard: int, dispatch: pb.Dispatch) -> None:
        if not self.ledger.on_dispatch(shard):
            log.warning("shard %d: dispatch of %s beyond the credit granted: running it anyway",
                        shard, dispatch.workflow_id)
        item = item_from_dispatch(shard, dispatch)
        if item.ref in self._by_ref:
            log.warning("shard %d: %s dispatched again while it runs here: ignored", shard, item)
            self.ledger.on_finish(shard)
            self._wake(shard)
            return
        item_id = f"{next(self._ids):x}"
        self._items[item_id] = item
        self._by_ref[item.ref] = item_id
        if self.state in ("draining", "stopped"):
            self._fail(item_id, SHUTDOWN_ERROR,
                       f"supervisor {self.supervisor_id} is shutting down: not started")
            return
        if not item.is_workflow_task and dispatch.history:
            try:
                self.chains.note_task(dispatch, history_tail(dispatch))
            except PayloadError as exc:  # only a shortcut lost: the task runs all the same
                log.warning("shard %d: the history on %s is unreadable: %s", shard, item,
                            exc.message)
        try:
            history = None
            if item.is_workflow_task:
                self.chains.note_workflow_task(dispatch)
                history = self._full_history(dispatch)
                if history is None:  # not cached: fetch it from Flow, then run it
                    task = asyncio.get_running_loop().create_task(
                        self._start_after_fetch(item_id, dispatch))
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)
                    return
            message = worker_message(dispatch, item_id, history)
        except PayloadError as exc:
            self._fail(item_id, "PayloadError", exc.message, non_retryable=not item.is_workflow_task)
            return
        self._submit(item_id, item, dispatch, message)

    def _full_history(self, dispatch: pb.Dispatch) -> list | None:
        run = (dispatch.workflow_id, dispatch.run_id)
        history = self.histories.assemble(run, dispatch.history_after_event_id,
                                          history_tail(dispatch))
        if history is not None:
            self.histories.put(run, history)
        return history

    async def _start_after_fetch(self, item_id: str, dispatch: pb.Dispatch) -> None:
        item = self._items.get(item_id)
        try:
            fetched = await self.flow_client().workflow_history(dispatch.workflow_id,
                                                                  dispatch.run_id)
            head = [e for e in fetched if e["event_id"] <= dispatch.history_after_event_id]
            history = head + history_tail(dispatch)
        except Exception as exc:  # a workflow task failure: Flow retries it
            self.metrics.child(self.metrics.history_fetches, "error").inc()
            if self._items.get(item_id) is item:
                self._fail(item_id, "HistoryUnavailable",
                           f"could not fetch the history of {dispatch.workflow_id}: {exc}")
            return
        self.metrics.child(self.metrics.history_fetches, "ok").inc()
        if self._items.get(item_id) is not item:
            return  # cancelled or the supervisor stopped meanwhile
        self.histories.put((dispatch.workflow_id, dispatch.run_id), history)
        self._submit(item_id, item, dispatch, worker_message(dispatch, item_id, history))

    def _submit(self, item_id: str, item, dispatch: pb.Dispatch, message: dict) -> None:
        try:
            self.pool.submit(message)
        except Exception as exc:
            log.exception("the worker pool refused %s", item)
            self._fail(item_id, "WorkerPoolError", f"the worker pool refused the item: {exc}")
            return
        if dispatch.start_to_close_timeout_ms and dispatch.task_key:
            item.deadline_s = time.monotonic() + dispatch.start_to_close_timeout_ms / 1000
            item.timer = asyncio.get_running_loop().call_later(
                dispatch.start_to_close_timeout_ms / 1000, self._timed_out, item_id,
                dispatch.start_to_close_timeout_ms)

    def _timed_out(self, item_id: str, timeout_ms: int) -> None:
        item = self._items.get(item_id)
        if item is None:
            return
        item.timed_out_s = timeout_ms / 1000
        log.info("%s ran past its start_to_close_timeout (%d ms): cancelling it", item, timeout_ms)
        self._cancel_in_pool(item_id)

    def flow_client(self):
        """A client of Flow for the supervisor's own reads (histories, broadcasts, state)."""
        if self._history_client is None:
            from coda.client.client import Client
            self._history_client = Client(self.addresses)
        return self._history_client

    def on_event(self, message: dict) -> None:
        """A worker's `done` or `heartbeat`, or a read it asks for (the pool's on_event
        callback)."""
        op = message.get("op")
        if "reply" in message:
            if self.reads is not None:
                reply = message.pop("reply")
                self.reads.on_worker_message(message, reply)
            return
        if op == "done":
            self._on_done(message)
        elif op == "heartbeat":
            item = self._items.get(message.get("id"))
            details = message.get("details")
            if item is None or not isinstance(details, (bytes, bytearray)):
                return
            if len(details) > self._payload_bytes_max[item.shard]:
                if not item.heartbeat_dropped:
                    item.heartbeat_dropped = True
                    log.warning("%s: heartbeat details of %d bytes over the payload limit: "
                                "dropped", item, len(details))
                return
            self._task_heartbeats[message["id"]] = bytes(details)

    def _on_done(self, message: dict) -> None:
        item_id = message.get("id")
        if item_id in self.chains.pending:
            self._chain_done(item_id, message)
            return
        item = self._items.get(item_id)
        if item is None:
            return  # already reported (timed out at shutdown, a duplicate answer)
        if item.timed_out_s is not None and message.get("error") is not None:
            message = {**message, "error": {
                "type": TIMEOUT_ERROR, "non_retryable": False,
                "message": f"task {item.type_name!r} ran longer than its start_to_close_timeout "
                           f"of {item.timed_out_s:g} s"}}
        completion = completion_for(item, message, request_id=uuid.uuid4().hex,
                                    payload_bytes_max=self._payload_bytes_max[item.shard])
        if item.is_workflow_task or self.state != "running" or not self._chain(item, item_id,
                                                                                completion):
            self._complete(item_id, completion)

    # --- chained workflow tasks (coda.supervisor.chaining) ------------------------------
    def _chain(self, item: Item, item_id: str, completion: pb.Completion) -> bool:
        """Run the workflow task this task's result wakes, to send both at once; False if
        it can't chain (the result then goes alone, now)."""
        if item.deadline_s is not None and item.deadline_s - time.monotonic() < DEADLINE_MARGIN_S:
            return False
        chain_id = f"{next(self._ids):x}"
        found = self.chains.message_for(chain_id, item_id, completion)
        if found is None:
            return False
        message, chain = found
        chain.timer = asyncio.get_running_loop().call_later(
            CHAIN_WAIT_S, self._chain_timed_out, chain_id)
        self.chains.pending[chain_id] = chain
        try:
            self.pool.submit(message)
        except Exception:
            log.exception("the worker pool refused a chained workflow task")
            self.chains.pending.pop(chain_id)
            chain.timer.cancel()
            return False
        return True

    def _chain_done(self, chain_id: str, message: dict) -> None:
        chain = self.chains.pending.pop(chain_id)
        chain.timer.cancel()
        commands = message.get("commands")
        item = self._items.get(chain.item_id)
        if item is None:
            return  # the task was reported meanwhile (a hurried shutdown)
        sent = False
        if message.get("error") is None and isinstance(commands, list):
            try:
                sent = attach(chain.completion, chain, codec.pack(commands), COMPLETION_BYTES_MAX)
            except Exception:  # what can't be packed goes the usual way, and fails there
                sent = False
        self.metrics.child(self.metrics.chained, "sent" if sent else "dropped").inc()
        self._complete(chain.item_id, chain.completion)

    def _chain_timed_out(self, chain_id: str, outcome: str = "timed_out") -> None:
        chain = self.chains.pending.pop(chain_id, None)
        if chain is None:
            return
        chain.timer.cancel()
        self.pool.cancel(chain_id)  # a worker still running it would be over its slots
        if chain.item_id in self._items:
            self.metrics.child(self.metrics.chained, outcome).inc()
            self._complete(chain.item_id, chain.completion)

    def _flush_chains(self) -> None:
        """Send every result still waiting for its chained workflow task, alone."""
        for chain_id in list(self.chains.pending):
            self._chain_timed_out(chain_id, "dropped")

    def _fail(self, item_id: str, error_type: str, message: str, *,
              non_retryable: bool = False) -> None:
        item = self._items[item_id]
        completion = completion_for(
            item, {"error": {"type": error_type, "message": message,
                             "non_retryable": non_retryable}},
            request_id=uuid.uuid4().hex, payload_bytes_max=self._payload_bytes_max[item.shard])
        self._complete(item_id, completion)

    def _complete(self, item_id: str, completion: pb.Completion) -> None:
        item = self._items.pop(item_id)
        del self._by_ref[item.ref]
        self._task_heartbeats.pop(item_id, None)
        if item.timer is not None:
            item.timer.cancel()
        self.metrics.item_finished(item.is_workflow_task, outcome_of(completion),
                                   time.monotonic() - item.received_s)
        batcher = self.batchers[item.shard]
        batcher.add(completion, time.monotonic())
        self.metrics.child(self.metrics.unacked, str(item.shard)).set(len(batcher))
        self.ledger.on_finish(item.shard)
        self._wake(item.shard)

    def _find(self, shard: int, wanted: pb.RunningItem) -> list[str]:
        """Local ids of the items a RunningItem names (attempt 0: any attempt)."""
        if wanted.attempt:
            item_id = self._by_ref.get((shard, wanted.workflow_id, wanted.run_id,
                                        wanted.task_key, wanted.attempt))
            return [item_id] if item_id else []
        return [i for i, item in self._items.items()
                if (item.shard, item.workflow_id, item.run_id, item.task_key)
                == (shard, wanted.workflow_id, wanted.run_id, wanted.task_key)]

    def _cancel_in_pool(self, item_id: str) -> None:
        try:
            self.pool.cancel(item_id)
        except Exception:
            log.exception("cancelling item %s in the pool failed", item_id)

    def _wake(self, shard: int) -> None:
        if shard < len(self.sessions):
            self.sessions[shard].wake.set()

    def _wake_all(self) -> None:
        for session in self.sessions:
            session.wake.set()

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict:
        sessions = {}
        for shard, session in enumerate(self.sessions):
            sessions[str(shard)] = {
                "connected": session.connected, "leader": session.address,
                "running": self.ledger.running[shard],
                "credit_outstanding": self.ledger.outstanding[shard],
                "unacked": len(self.batchers[shard])}
        try:
            pids, in_flight = self.pool.worker_pids(), self.pool.in_flight()
        except Exception:
            pids, in_flight = [], None
        healthy = (self.state == "running" and bool(sessions)
                   and all(s["connected"] for s in sessions.values()))
        return {"supervisor_id": self.supervisor_id, "build_id": self.build_id,
                "module": self.module, "state": self.state, "healthy": healthy,
                "workflow_types": self.workflow_types, "task_types": self.task_types,
                "sessions": sessions, "workers": pids, "in_flight": in_flight,
                "items": len(self._items),
                "history_cache": {"runs": len(self.histories), "hits": self.histories.hits,
                                  "misses": self.histories.misses},
                "broadcasts": self.reads.status() if self.reads is not None else None}


# ===========================================================================================
# The process entry point
# ===========================================================================================

def run_supervisor(addresses: list[str], module: str, *, workers: int, slots: int | None = None,
                   build_id: str | None = None, health_port: int | None = None,
                   supervisor_id: str | None = None,
                   drain_s: float = DRAIN_S_DEFAULT) -> int:
    """Run a supervisor until SIGTERM/SIGINT; returns the process exit code."""
    _configure_logging()
    try:
        addresses = _split_addresses(addresses)
        _check_settings(workers, slots, health_port, drain_s, build_id)
        build_id = build_id or module_build_id(module)
    except ConfigError as exc:
        log.error("%s", exc.message)
        return 2
    supervisor_id = supervisor_id or default_supervisor_id()
    tune_process()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_main(addresses, module, workers=workers,
                                slots=slots or workers * SLOTS_PER_WORKER, build_id=build_id,
                                supervisor_id=supervisor_id, drain_s=drain_s,
                                health_port=health_port))


async def _main(addresses, module, *, health_port, **settings) -> int:
    supervisor = Supervisor(addresses, module, **settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.request_stop)
    health = None
    if health_port is not None:
        health = HealthServer(health_port, supervisor.status, supervisor.metrics.render)
        try:
            await health.start()
        except OSError as exc:
            log.error("can't serve health on 127.0.0.1:%d: %s", health_port, exc)
            return 2
    try:
        return await supervisor.run()
    finally:
        if health is not None:
            await health.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _split_addresses(addresses) -> list[str]:
    if isinstance(addresses, str):
        addresses = [addresses]
    parts = [a.strip() for entry in addresses for a in str(entry).split(",") if a.strip()]
    if not parts:
        raise ConfigError("no Flow address given (host:port[,host:port...] or CODA_ADDRESS)",
                          field="address")
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"Flow address {part!r} is not host:port", field="address")
    return parts


def _check_settings(workers, slots, health_port, drain_s, build_id=None) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}", field="workers")
    if slots is not None and (not isinstance(slots, int) or slots < 1):
        raise ConfigError(f"--slots must be an integer >= 1, got {slots!r}", field="slots")
    if health_port is not None and not (0 <= health_port <= 65535):
        raise ConfigError(f"--health-port must be 0..65535, got {health_port!r}",
                          field="health_port")
    if build_id is not None and not (0 < len(str(build_id).encode()) <= limits.build_id_bytes_max
                                     and "\x00" not in str(build_id)):
        raise ConfigError(f"--build-id must be 1..{limits.build_id_bytes_max} bytes without NUL, "
                          f"got {build_id!r}", field="build_id")
    if drain_s < 0:
        raise ConfigError(f"the drain deadline must be >= 0 s, got {drain_s!r}", field="drain_s")


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


__all__ = ["run_supervisor", "Supervisor", "Item", "worker_message", "completion_for",
           "failure", "module_build_id", "module_source_files", "default_supervisor_id",
           "DRAIN_S_DEFAULT", "SHUTDOWN_ERROR"]
