"""Runs workflow code deterministically from its history (the worker side of replay).

A workflow is an `async def`. We do not run it on asyncio: `WorkflowRun` drives the
coroutine by hand, one `send()` at a time, and the only things it may await are Coda's
own futures (from `coda.context`). So a run is a pure function of its history: given the
same events it makes the same calls in the same order and emits the same commands.

    run = WorkflowRun(definition, args, info)
    commands = run.advance(events)   # the whole history (replay) or the events since the
                                     # last call (a cached, "sticky" run); returns the new
                                     # commands: ScheduleTask, CompleteWorkflow, FailWorkflow

Task keys: a task spawned with `cache_key` is keyed by its name and that key, otherwise by
its position among the run's spawns. A key whose result is in the history resolves at once
from it, so completed tasks never run again — also in a retried attempt of the workflow,
which replays the same history. The n-th spawn must match the n-th TaskScheduled event of
the history; if not, `NonDeterminismError` names both sides (and the workflow task fails,
not the workflow: fix the code and the run continues).

History events (dicts, each with `event_id` and `time_ms`): TaskScheduled {key, task},
TaskCompleted {key, result}, TaskFailed {key, error: {type, message}},
WorkflowCancelRequested {reason}, and WorkflowTaskCompleted {seen_event_id}: the marker
Flow writes when a workflow task's commands commit, saying how much history that task
saw. Replay follows the markers: results and cancellations are revealed to the
coroutine in the same steps as in the original run, so a workflow that reacted to a
cancel before a task finished reacts the same way on replay. TaskScheduled events are
read up front (they record what was already decided).

`now()` is the latest time the workflow has observed: its start, then the time of each
result it awaited. That is the same on every replay.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import hashlib
import random as _random
import uuid as _uuid
from dataclasses import dataclass

from coda.client.runtime_state import SIGNAL_PREFIX, StateAndSignals, state_key  # noqa: F401
from coda.errors import CodaError, InvalidArgument, LimitExceeded, PayloadError
from coda.flow import limits
from coda.storage import codec

ASYNCIO_HINT = ("workflows run on Coda's deterministic loop and may only await coda.context "
                "operations (spawn_task, await_all, ...), which replay the same way every time")

_current: contextvars.ContextVar["WorkflowRun"] = contextvars.ContextVar("coda_workflow_run")


class NonDeterminismError(CodaError):
    """Replaying a history took a different path than the run that recorded it."""
    code = "NON_DETERMINISM"


class ContinueAsNew(BaseException):
    """Raised by coda.context.continue_as_new: ends this run, starts the next. A
    BaseException, so a workflow's `except Exception` does not swallow it."""

    def __init__(self, args_payload: bytes):
        super().__init__("continue as new")
        self.args_payload = args_payload


class ChildWorkflowFailedError(CodaError):
    """A child workflow closed without completing (failed, cancelled, terminated, timed out)."""
    code = "CHILD_WORKFLOW_FAILED"

    @property
    def status(self) -> str:
        return self.details.get("status", "")

    @property
    def error_type(self) -> str:
        return self.details.get("error_type", "")


class TaskFailedError(CodaError):
    """A task failed for good (its retries, if any, are exhausted)."""
    code = "TASK_FAILED"

    @property
    def error_type(self) -> str:
        return self.details.get("error_type", "")


@dataclass(frozen=True)
class RunInfo:
    workflow_id: str
    run_id: str
    start_time_ms: int
    attempt: int = 1


class CodaFuture:
    """The result of a spawned task; await it inside a workflow."""

    def __init__(self, description: str):
        self.description = description
        self._done = False
        self._result = None
        self._error: BaseException | None = None
        self.time_ms = 0  # when the outcome was recorded: awaiting it moves now() there

    def done(self) -> bool:
        return self._done

    def set_result(self, value, time_ms: int = 0) -> None:
        if not self._done:
            self._done, self._result, self.time_ms = True, value, time_ms

    def set_error(self, error: BaseException, time_ms: int = 0) -> None:
        if not self._done:
            self._done, self._error, self.time_ms = True, error, time_ms

    def result(self):
        assert self._done
        if self._error is not None:
            raise self._error
        return self._result

    def __await__(self):
        while not self._done:
            yield self  # tells WorkflowRun the coroutine is blocked
        _observe(self.time_ms)
        return self.result()


class _Composite(CodaFuture):
    """A future made of others: `refresh` settles it from its parts."""

    def refresh(self) -> None:
        raise NotImplementedError

    def __await__(self):
        self.refresh()
        while not self._done:
            yield self
            self.refresh()
        _observe(self.time_ms)
        return self.result()


class _AllOf(_Composite):
    """Done when every part is done, or as soon as one fails (the earliest spawned wins)."""

    def __init__(self, parts: list[CodaFuture]):
        super().__init__(f"await_all of {len(parts)}")
        self.parts = parts

    def refresh(self) -> None:
        for part in self.parts:
            if isinstance(part, _Composite) and not part.done():
                part.refresh()
        failed = [p for p in self.parts if p.done() and p._error is not None]
        if failed:
            self.set_error(failed[0]._error, failed[0].time_ms)
        elif all(p.done() for p in self.parts):
            self.set_result([p.result() for p in self.parts],
                            max((p.time_ms for p in self.parts), default=0))


class _Deadline(_Composite):
    """`wait_for`: the awaited future's outcome, or TimeoutError once its timer fired.
    If both are known in the same step, the awaited one wins (the same on every replay,
    since replay reveals events in the steps they first came in)."""

    def __init__(self, awaited: CodaFuture, timer: CodaFuture, timeout_s: float):
        super().__init__(f"{awaited.description} within {timeout_s} s")
        self.awaited, self.timer, self.timeout_s = awaited, timer, timeout_s

    def refresh(self) -> None:
        if isinstance(self.awaited, _Composite):
            self.awaited.refresh()
        if self.awaited.done():
            if self.awaited._error is not None:
                self.set_error(self.awaited._error, self.awaited.time_ms)
            else:
                self.set_result(self.awaited._result, self.awaited.time_ms)
        elif self.timer.done():
            self.set_error(TimeoutError(f"{self.awaited.description} did not finish within "
                                        f"{self.timeout_s} s"), self.timer.time_ms)


class _SignalWait(_Composite):
    """`wait_signal`: takes the oldest buffered signal of its name, only while awaited
    (directly or through wait_for / await_all), so a timed-out wait consumes nothing."""

    def __init__(self, run: "WorkflowRun", name: str):
        super().__init__(f"signal {name!r}")
        self.run, self.name = run, name

    def refresh(self) -> None:
        if not self._done:
            taken = self.run.take_signal(self.name)
            if taken is not None:
                self.set_result(taken[0], taken[1])


def _observe(time_ms: int) -> None:
    run = _current.get(None)
    if run is not None:
        run.now_ms = max(run.now_ms, time_ms)


class WorkflowRun(StateAndSignals):
    def __init__(self, definition, args: dict, info: RunInfo):
        self.definition = definition
        self.info = info
        self.now_ms = info.start_time_ms
        # The attempt is part of the seed: a retried attempt replays the same history but
        # may draw other numbers after the point where the last one failed (the seed's
        # "random 1/0"); within an attempt every replay draws the same.
        seed = hashlib.blake2b(f"{info.workflow_id}/{info.run_id}/{info.attempt}".encode(),
                               digest_size=8)
        self.rng = _random.Random(int.from_bytes(seed.digest(), "big"))
        self._args = args
        self._coro = None
        self._spawns: list[tuple[str, str]] = []   # (key, task name) in call order
        self._futures: dict[str, CodaFuture] = {}
        self._scheduled: list[tuple[str, str]] = []  # from history, in order
        self._results: dict[str, tuple[bool, object, int]] = {}  # key -> (ok, value, time_ms)
        self._unrevealed: list[dict] = []  # results/cancels not yet shown to the coroutine
        self._pending_commands: list[dict] = []
        self._waiting_on: CodaFuture | None = None
        self._violation: NonDeterminismError | None = None
        self._cancel_reason: str | None = None
        self._cancel_delivered = False
        self.events_fed = 0
        self.last_event_id = 0
        self.finished = False
        self._init_state_and_signals()
        self._open_task_keys: set[str] = set()   # spawned tasks without an outcome yet

    # --- driving ---------------------------------------------------------------------------
    def advance(self, events: list[dict]) -> list[dict]:
        """Feed new history events, run the workflow as far as it can go, return commands.

        Events are taken in steps: up to each WorkflowTaskCompleted marker, only what that
        workflow task saw is revealed, and the coroutine runs until blocked; then the
        rest. Commands already recorded in history are not returned again.
        """
        token = _current.set(self)
        try:
            # Spawns recorded in history are read up front: a replayed step is checked
            # against all of them, also those recorded after its marker (its own commands).
            for event in events:
                kind = event.get("type")
                if kind == "TaskScheduled":
                    self._scheduled.append((event["key"], event["task"]))
                elif kind == "ChildWorkflowScheduled":
                    self._scheduled.append((event["key"], CHILD_PREFIX + event["workflow_type"]))
                elif kind == "TimerStarted":
                    self._scheduled.append((event["key"], TIMER_NAME))
                elif kind == "SignalExternalScheduled":
                    self._scheduled.append((event["key"], SIGNAL_PREFIX + event["name"]))
                else:
                    self._scan_recorded(event)
            for event in events:
                self.events_fed += 1
                self.last_event_id = max(self.last_event_id, int(event.get("event_id") or 0))
                kind = event.get("type")
                if kind in REVEALED_EVENTS:
                    self._unrevealed.append(event)
                elif kind == "WorkflowTaskCompleted":
                    self._step(reveal_up_to=int(event.get("seen_event_id") or 0))
            self._step(reveal_up_to=None)
            return self._take_commands()
        finally:
            _current.reset(token)

    def _step(self, reveal_up_to: int | None) -> None:
        """Reveal events up to an event id (None: all), then run until blocked."""
        keep = []
        for event in self._unrevealed:
            if reveal_up_to is None or int(event.get("event_id") or 0) <= reveal_up_to:
                self._absorb(event)
            else:
                keep.append(event)
        self._unrevealed = keep
        # Steps up to a marker re-run workflow tasks that already committed: a replay.
        self.replaying = reveal_up_to is not None
        if self.finished:
            return
        if self._coro is None:
            self._coro = self.definition.fn(**self._args)
        self._resolve_known()
        self._run_until_blocked()

    def _absorb(self, event: dict) -> None:
        kind = event.get("type")
        time_ms = int(event.get("time_ms") or 0)
        if kind == "TaskCompleted":
            self._results[event["key"]] = (True, event.get("result"), time_ms)
        elif kind == "TaskFailed":
            error = event.get("error") or {}
            self._results[event["key"]] = (False, TaskFailedError(
                f"task {event['key']} failed: {error.get('type', 'Error')}: "
                f"{error.get('message', '')}",
                error_type=error.get("type", ""), key=event["key"]), time_ms)
        elif kind == "TimerFired":
            self._results[event["key"]] = (True, None, time_ms)
        elif kind == "ChildWorkflowClosed":
            if event.get("status") == "COMPLETED":
                result = event.get("result")
                self._results[event["key"]] = (
                    True, codec.unpack(result) if isinstance(result, bytes) else result, time_ms)
            else:
                failure = event.get("failure") or {}
                self._results[event["key"]] = (False, ChildWorkflowFailedError(
                    f"child workflow {event.get('workflow_id')} ended {event.get('status')}: "
                    f"{failure.get('type', 'Error')}: {failure.get('message', '')}",
                    status=event.get("status"), error_type=failure.get("type", ""),
                    workflow_id=event.get("workflow_id")), time_ms)
        elif kind == "SignalReceived":
            self._absorb_signal(event)
        elif kind == "SignalExternalSent":
            self._results[event["key"]] = (True, None, time_ms)
        elif kind == "SignalExternalFailed":
            self._results[event["key"]] = (False, self.signal_failure(event), time_ms)
        elif kind == "WorkflowCancelRequested" and self._cancel_reason is None:
            self._cancel_reason = str(event.get("reason") or "cancelled")
            self.now_ms = max(self.now_ms, time_ms)

    def _resolve_known(self) -> None:
        for key, future in self._futures.items():
            if key in self._results and not future.done():
                _settle(future, self._results[key])
                self._open_task_keys.discard(key)

    def _run_until_blocked(self) -> None:
        while True:
            cancel_now = (self._cancel_reason is not None and not self._cancel_delivered
                          and self._waiting_on is not None)
            if self._waiting_on is not None and not cancel_now:
                if isinstance(self._waiting_on, _Composite):
                    self._waiting_on.refresh()
                if not self._waiting_on.done():
                    return
            try:
                if cancel_now:
                    # Delivered where the workflow waits, once; it may catch it and clean up.
                    self._cancel_delivered = True
                    yielded = self._coro.throw(asyncio.CancelledError(self._cancel_reason))
                else:
                    yielded = self._coro.send(None)
            except StopIteration as stop:
                self._raise_violation()
                self._check_history_consumed()
                return self._finish({"type": "CompleteWorkflow", "result": stop.value})
            except ContinueAsNew as can:
                self._raise_violation()
                return self._finish({"type": "ContinueAsNew", "args": can.args_payload})
            except asyncio.CancelledError as exc:
                self._raise_violation()
                if self._cancel_reason is None:  # raised by the workflow itself: a failure
                    return self._finish({"type": "FailWorkflow", "error": {
                        "type": "CancelledError", "message": str(exc)}})
                return self._finish({"type": "CancelWorkflow", "reason": self._cancel_reason})
            except Exception as exc:
                self._raise_violation()
                message = str(exc)
                if isinstance(exc, RuntimeError) and "event loop" in message:
                    message = (f"{message}: workflow {self.definition.name} used asyncio, but "
                               f"{ASYNCIO_HINT}")
                command = {"type": "FailWorkflow", "error": {
                    "type": type(exc).__name__, "message": message}}
                if isinstance(exc, PayloadError):
                    # Args a spawn could not encode: every attempt replays to the same
                    # spawn and fails the same way, so the worker makes it final.
                    command["final"] = True
                return self._finish(command)
            self._raise_violation()  # even if the workflow caught it
            if not isinstance(yielded, CodaFuture):
                self._coro.close()
                return self._finish({"type": "FailWorkflow", "error": {
                    "type": "InvalidArgument", "message":
                    f"workflow {self.definition.name} awaited {yielded!r}; {ASYNCIO_HINT}"}})
            self._waiting_on = yielded

    def _raise_violation(self) -> None:
        if self._violation is not None:
            self.finished = True
            if self._coro.cr_frame is not None:
                self._coro.close()
            raise self._violation

    def _check_history_consumed(self) -> None:
        if len(self._futures) < len(self._scheduled):
            position = len(self._futures)
            recorded_key, recorded_task = self._scheduled[position]
            self._violation = NonDeterminismError(
                f"workflow {self.definition.name} ({self.info.workflow_id}) finished after "
                f"{position} spawns, but the history recorded task {recorded_task!r} with key "
                f"{recorded_key!r} as spawn #{position}. Check that your workflow is "
                "deterministic.", position=position, history=[recorded_task, recorded_key],
                replay=None)
            self._raise_violation()

    def _finish(self, command: dict) -> None:
        self.finished = True
        self._pending_commands.append(command)

    def _take_commands(self) -> list[dict]:
        commands, self._pending_commands = self._pending_commands, []
        return commands

    # --- what coda.context calls -------------------------------------------------------------
    def spawn_task(self, task_name: str, args: dict, cache_key, options: dict) -> CodaFuture:
        position = len(self._spawns)
        key = task_key(task_name, cache_key, position)
        if key in self._futures:
            # The same cache_key twice in one run: one task, one result.
            self._spawns.append((key, task_name))
            return self._futures[key]
        # The n-th distinct key spawned is the n-th spawn recorded in history (a repeated
        # cache_key records nothing), whatever its position among all spawns.
        recorded = len(self._futures)
        self._check_matches_history(recorded, key, task_name)
        command = None
        if key not in self._results and recorded >= len(self._scheduled):
            if len(self._open_task_keys) >= limits.open_tasks_per_run_max:
                # Refused here, where the workflow can catch it (Flow checks it too).
                raise LimitExceeded(f"workflow {self.info.workflow_id} has "
                                    f"{len(self._open_task_keys)} tasks open, the limit is "
                                    f"{limits.open_tasks_per_run_max}: await some first",
                                    limit=limits.open_tasks_per_run_max)
            # Args that can't be sent raise here, at the call, before anything is recorded.
            command = {"type": "ScheduleTask", "key": key, "task": task_name,
                       "args": codec.encode_payload(args, what=f"args of task {task_name!r}",
                                                    limit_bytes=limits.payload_bytes_max),
                       "options": options, "idempotency_key": self.idempotency_key(key)}
        self._spawns.append((key, task_name))
        future = CodaFuture(f"task {task_name} ({key})")
        self._futures[key] = future
        if key in self._results:
            _settle(future, self._results[key])
        else:
            self._open_task_keys.add(key)
            if command is not None:
                self._pending_commands.append(command)
        return future

    def spawn_workflow(self, workflow_type: str, args: dict, workflow_id: str | None,
                       options: dict) -> CodaFuture:
        """A child workflow: its own run (on whatever shard its id hashes to); the future
        resolves with its result, or raises ChildWorkflowFailedError."""
        position = len(self._spawns)
        child_id = workflow_id or f"{self.info.workflow_id}/child-{position}"
        key = "w:" + hashlib.blake2b(child_id.encode(), digest_size=12).hexdigest()
        name = CHILD_PREFIX + workflow_type
        recorded = len(self._futures)
        self._check_matches_history(recorded, key, name)
        self._spawns.append((key, name))
        future = CodaFuture(f"child workflow {workflow_type} ({child_id})")
        self._futures[key] = future
        if key in self._results:
            _settle(future, self._results[key])
        elif recorded >= len(self._scheduled):
            self._pending_commands.append({
                "type": "StartChildWorkflow", "key": key, "workflow_type": workflow_type,
                "workflow_id": child_id, "options": options,
                "args": codec.encode_payload(args, what=f"args of child workflow {child_id!r}",
                                             limit_bytes=limits.payload_bytes_max)})
        return future

    def start_timer(self, delay_ms: int) -> CodaFuture:
        """A durable timer: the future resolves (with None) once `delay_ms` passed on the
        shard leader's clock; the workflow's now() then reads the firing time."""
        recorded = len(self._futures)
        key = f"t:{recorded}"
        self._check_matches_history(recorded, key, TIMER_NAME)
        self._spawns.append((key, TIMER_NAME))
        future = CodaFuture(f"timer of {delay_ms} ms ({key})")
        self._futures[key] = future
        if key in self._results:
            _settle(future, self._results[key])
        elif recorded >= len(self._scheduled):
            self._pending_commands.append({"type": "StartTimer", "key": key,
                                           "delay_ms": delay_ms})
        return future

    def _check_matches_history(self, position: int, key: str, task_name: str) -> None:
        if position < len(self._scheduled):
            recorded_key, recorded_task = self._scheduled[position]
            if (recorded_key, recorded_task) != (key, task_name):
                self._violation = NonDeterminismError(
                    f"workflow {self.definition.name} ({self.info.workflow_id}): spawn #{position} "
                    f"is task {task_name!r} with key {key!r}, but the history recorded task "
                    f"{recorded_task!r} with key {recorded_key!r} at that position. Check that "
                    "your workflow is deterministic.", position=position,
                    history=[recorded_task, recorded_key], replay=[task_name, key])
                raise self._violation

    def _settle_known(self, future: CodaFuture, outcome: tuple) -> None:
        _settle(future, outcome)

    def wait_signal(self, name: str) -> CodaFuture:
        return _SignalWait(self, name)

    def continue_as_new(self, args: dict) -> None:
        raise ContinueAsNew(codec.encode_payload(args, what="continue-as-new args",
                                                 limit_bytes=self.payload_bytes_max))

    def idempotency_key(self, key: str) -> str:
        """Stable across retries and replays of this workflow: hand it to external services."""
        return f"{self.info.workflow_id}/{key}"

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now_ms / 1000, datetime.timezone.utc)

    def random(self) -> float:
        return self.rng.random()

    def uuid4(self) -> _uuid.UUID:
        return _uuid.UUID(int=self.rng.getrandbits(128), version=4)


REVEALED_EVENTS = frozenset({"TaskCompleted", "TaskFailed", "WorkflowCancelRequested",
                             "ChildWorkflowClosed", "TimerFired", "SignalReceived",
                             "SignalExternalSent", "SignalExternalFailed"})
# How a durable timer appears among a run's spawns.
TIMER_NAME = "timer"
# How a child workflow appears among a run's spawns (beside task names).
CHILD_PREFIX = "workflow:"


def _settle(future: CodaFuture, outcome: tuple[bool, object, int]) -> None:
    ok, value, time_ms = outcome
    future.set_result(value, time_ms) if ok else future.set_error(value, time_ms)


def task_key(task_name: str, cache_key, position: int) -> str:
    if cache_key is None:
        return f"#{position}"
    try:
        encoded = codec.pack(list(cache_key) if isinstance(cache_key, (list, tuple)) else [cache_key])
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"cache_key of task {task_name!r} must be msgpack-encodable: {exc}",
                              field="cache_key") from None
    # Short and fixed-size (Flow keys tasks by it inside 511-byte LMDB keys); the name is
    # hashed in, so the same cache_key under two task names is two tasks.
    digest = hashlib.blake2b(task_name.encode() + b"\x00" + encoded, digest_size=12)
    return f"c:{digest.hexdigest()}"


def current_run() -> WorkflowRun:
    run = _current.get(None)
    if run is None:
        raise InvalidArgument("coda.context is only usable inside a running workflow")
    return run


def deadline(awaited, timeout_s: float) -> CodaFuture:
    if not isinstance(awaited, CodaFuture):
        raise InvalidArgument(f"wait_for takes a future of coda.context (spawn_task, "
                              f"spawn_workflow, await_all, ...), got {awaited!r}")
    return _Deadline(awaited, current_run().start_timer(int(round(timeout_s * 1000))),
                     timeout_s)


def all_of(futures) -> CodaFuture:
    parts = list(futures)
    for part in parts:
        if not isinstance(part, CodaFuture):
            raise InvalidArgument(f"await_all takes the futures of spawn_task, got {part!r}")
    return _AllOf(parts)
