"""`coda.testing`: run a workflow in-process, without a cluster, for unit tests; replay
a recorded history against changed code (`replay`).

`run_locally` drives a workflow with the same deterministic runtime workers use
(`WorkflowRun`), runs its tasks in this process (sync or async; task retries under each
task's RetryPolicy, backoff not slept), and retries the workflow by replaying its history
under the workflow's RetryPolicy — so a test sees exactly which tasks ran how often.
"""

from __future__ import annotations

import collections
import inspect
import sys
from dataclasses import dataclass, field

from coda.client import sdk
from coda.client.workflow_runtime import RunInfo, WorkflowRun
from coda import errors
from coda.errors import InvalidArgument
from coda.storage import codec

ATTEMPTS_MAX = 100  # a workflow retried more often than this in a test is a bug


# The same error a real cluster's handle.result() raises for a failed workflow.
WorkflowFailedError = errors.WorkflowFailedError


@dataclass
class LocalRun:
    result: object
    attempts: int
    history: list[dict]
    task_runs: collections.Counter = field(default_factory=collections.Counter)
    # What the workflow published (set_state) and sent (signal_workflow: (id, name, payload)).
    state: dict = field(default_factory=dict)
    signals_sent: list = field(default_factory=list)


class _World:
    """What a local run reads and sends outside itself: broadcasts and other workflows'
    state given by the test; signals to other workflows recorded as delivered."""

    def __init__(self, broadcasts, workflow_states, start_time_ms: int = 0):
        self.broadcasts = dict(broadcasts or {})
        self.workflow_states = dict(workflow_states or {})
        self.sent: list = []
        self.now_ms = start_time_ms
        self.timers: list[tuple[int, str]] = []  # (fire_at_ms, key) started, not fired

    def start_timer(self, command: dict) -> list[dict]:
        fire_at_ms = self.now_ms + command["delay_ms"]
        self.timers.append((fire_at_ms, command["key"]))
        return [{"type": "TimerStarted", "key": command["key"], "fire_at_ms": fire_at_ms}]

    def skip_time(self) -> list[dict]:
        """Time skipping: the run waits on nothing but time, so the soonest timer fires
        now and the clock moves to it (the run's now() reads it)."""
        if not self.timers:
            return []
        self.timers.sort()
        fire_at_ms, key = self.timers.pop(0)
        self.now_ms = max(self.now_ms, fire_at_ms)
        return [{"type": "TimerFired", "key": key, "time_ms": self.now_ms}]

    def resolve(self, kind: str, params: dict, min_version: int) -> dict:
        if kind == "broadcast":
            found = params["name"] in self.broadcasts
            value = self.broadcasts.get(params["name"])
        else:
            found = (params["workflow_id"], params["key"]) in self.workflow_states
            value = self.workflow_states.get((params["workflow_id"], params["key"]))
        return {"found": found, "version": 1 if found else 0,
                "value": codec.pack(value) if found else None}

    def events_for(self, command: dict) -> list[dict]:
        kind = command["type"]
        if kind == "SetState":
            return [{"type": "StateSet", "key": command["key"], "value": command["value"]}]
        if kind == "RecordRead":
            return [dict(command, type="StateRead" if command["kind"] == "state"
                         else "BroadcastRead")]
        if kind == "SignalExternal":
            self.sent.append((command["workflow_id"], command["name"],
                              codec.unpack(command["payload"])))
            return [{"type": "SignalExternalScheduled", "key": command["key"],
                     "workflow_id": command["workflow_id"], "name": command["name"]},
                    {"type": "SignalExternalSent", "key": command["key"]}]
        return []


# Events that let a waiting run go on; a step with none of them waits on time alone.
_PROGRESS = ("TaskCompleted", "TaskFailed", "ChildWorkflowClosed", "SignalExternalSent")


def _signal_events(signals) -> list[dict]:
    """signals: [(name, payload), ...] in the order they arrive (before the run starts)."""
    return [{"type": "SignalReceived", "name": name, "payload": codec.pack(payload),
             "signal_id": n + 1} for n, (name, payload) in enumerate(signals or ())]


def _task_registry(workflow_fn, tasks) -> dict[str, sdk.TaskDefinition]:
    candidates = tasks if tasks is not None else vars(sys.modules[workflow_fn.__module__]).values()
    registry = {}
    for candidate in candidates:
        definition = sdk.definition_of(candidate)
        if isinstance(definition, sdk.TaskDefinition):
            registry[definition.name] = definition
    return registry


async def _run_task(definition: sdk.TaskDefinition, args: dict, runs: collections.Counter) -> dict:
    """Run a task until it succeeds or its retry policy gives up; returns the final event."""
    attempt = 0
    while True:
        attempt += 1
        runs[definition.name] += 1
        try:
            value = definition.fn(**args)
            if inspect.isawaitable(value):
                value = await value
            return {"type": "TaskCompleted", "result": value}
        except Exception as exc:
            if not definition.retry.retries_after(attempt, type(exc).__name__):
                return {"type": "TaskFailed",
                        "error": {"type": type(exc).__name__, "message": str(exc)}}
            if attempt >= ATTEMPTS_MAX:
                raise


async def run_locally(workflow_fn, args: dict | None = None, *, tasks=None,
                      workflow_id: str = "local-workflow", start_time_ms: int = 0,
                      signals=None, broadcasts: dict | None = None,
                      workflow_states: dict | None = None) -> LocalRun:
    """Run `workflow_fn` to completion in this process; raises WorkflowFailedError.

    signals: [(name, payload), ...] waiting for the run when it starts; broadcasts:
    {name: value}; workflow_states: {(workflow_id, key): value} for get_state of others.
    Time is skipped: when the run waits on nothing but timers (sleep, timeouts), the
    soonest fires at once and now() moves to it, from `start_time_ms`."""
    definition = sdk.definition_of(workflow_fn)
    if not isinstance(definition, sdk.WorkflowDefinition):
        raise InvalidArgument(f"{workflow_fn!r} is not a @coda.workflow function")
    registry = _task_registry(workflow_fn, tasks)
    history: list[dict] = _signal_events(signals)
    runs: collections.Counter = collections.Counter()
    world = _World(broadcasts, workflow_states, start_time_ms)
    for attempt in range(1, ATTEMPTS_MAX + 1):
        run = WorkflowRun(definition, dict(args or {}),
                          RunInfo(workflow_id, "local-run", start_time_ms, attempt))
        run.resolver = world.resolve
        commands = run.advance(history)
        while True:
            final = [c for c in commands if c["type"] in ("CompleteWorkflow", "FailWorkflow")]
            new_events = []
            for command in commands:
                if command["type"] == "ScheduleTask":
                    new_events += await _schedule(command, registry, runs)
                elif command["type"] == "StartTimer":
                    new_events += world.start_timer(command)
                else:
                    new_events += world.events_for(command)
            if not final and not any(e["type"] in _PROGRESS for e in new_events):
                new_events += world.skip_time()
            history += new_events
            if final or not new_events:
                break
            commands = run.advance(new_events)
        if final and final[0]["type"] == "CompleteWorkflow":
            state = {e["key"]: codec.unpack(e["value"]) for e in history
                     if e["type"] == "StateSet"}
            return LocalRun(final[0]["result"], attempt, history, runs, state, world.sent)
        error = final[0]["error"] if final else {"type": "Stuck", "message": "no progress"}
        if not final or not definition.retry.retries_after(attempt, error["type"]):
            raise WorkflowFailedError(f"workflow {definition.name} failed on attempt {attempt}: "
                                      f"{error['type']}: {error['message']}", attempts=attempt)
    raise WorkflowFailedError(f"workflow {definition.name} still failing after {ATTEMPTS_MAX} attempts")


async def _schedule(command: dict, registry: dict, runs: collections.Counter) -> list[dict]:
    name = command["task"]
    if name not in registry:
        raise InvalidArgument(f"task {name!r} is not defined (known: {sorted(registry)}); pass "
                              "tasks=[...] to run_locally", field="task")
    scheduled = {"type": "TaskScheduled", "key": command["key"], "task": name}
    outcome = await _run_task(registry[name], codec.unpack(command["args"]), runs)
    return [scheduled, dict(outcome, key=command["key"])]


# --- replaying real histories (docs/long-lived-workflows.md) ------------------------------

@dataclass
class ReplayResult:
    commands: list[dict]     # what the code would do next (nothing if it matched to the end)
    finished: bool           # the code reached its end (returned, raised, continued as new)


def load_history(history) -> list[dict]:
    """A history as `coda workflow history ID --json` writes it (a path, or its JSON
    text), or as `handle.history()` returns it: a list of event maps."""
    import json
    import os
    if isinstance(history, (str, os.PathLike)):
        text = str(history)
        if not text.lstrip().startswith("["):
            with open(history) as f:
                text = f.read()
        history = json.loads(text)
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise InvalidArgument("a history is a list of event maps (coda workflow history ID "
                              "--json)", field="history")
    return [_plain_event(e) for e in history]


def _plain_event(event: dict) -> dict:
    """Raw events carry msgpack bytes; exported ones carry the decoded values. The
    runtime takes values where it reads them (results, input, payloads)."""
    out = dict(event)
    for field in ("result", "input"):
        if isinstance(out.get(field), (bytes, bytearray)):
            out[field] = codec.unpack(bytes(out[field]))
    return out


def replay(workflow_fn, history, *, workflow_id: str = "replay", run_id: str = "replay"):
    """Replay a recorded history against the current code of `workflow_fn`: raises
    NonDeterminismError (naming both sides) if the code takes another path than the
    history recorded. Check a change against real histories before deploying it.

    Pass the run's `workflow_id` and `run_id` when the workflow uses
    coda.context.random() or uuid4(): they seed them."""
    definition = sdk.definition_of(workflow_fn)
    if not isinstance(definition, sdk.WorkflowDefinition):
        raise InvalidArgument(f"{workflow_fn!r} is not a @coda.workflow function")
    events = load_history(history)
    started = next((e for e in events if e.get("type") == "WorkflowExecutionStarted"), None)
    if started is None:
        raise InvalidArgument("the history has no WorkflowExecutionStarted event",
                              field="history")
    attempt = 1 + sum(1 for e in events if e.get("type") == "WorkflowAttemptFailed")
    run = WorkflowRun(definition, dict(started.get("input") or {}),
                      RunInfo(workflow_id, run_id, int(started.get("time_ms") or 0), attempt))
    run.resolver = None  # every read a replay makes is in the history, or it diverged
    commands = run.advance(events)
    return ReplayResult(commands, run.finished)
