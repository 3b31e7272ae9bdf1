"""`coda.context`: what workflow code calls. Every call is deterministic on replay.

    data = await coda.context.spawn_task(normalize_event, args={...}, cache_key=[event_id])
    results = await coda.context.await_all([coda.context.spawn_task(send, args={"org": o})
                                            for o in orgs])
    coda.context.now(), coda.context.random(), coda.context.uuid4()
"""

from __future__ import annotations

import datetime
import uuid

from coda.client import sdk, task_context
from coda.client.runtime_state import MISSING, check_read_default, state_key
from coda.client.workflow_runtime import (CodaFuture, _current, all_of, current_run,
                                          deadline)
from coda.errors import InvalidArgument
from coda.flow import limits, validate

__all__ = ["spawn_task", "spawn_workflow", "sleep", "sleep_until", "wait_for", "await_all",
           "gather", "now", "random", "uuid4", "workflow_id", "heartbeat", "idempotency_key",
           "task_info", "set_state", "get_state", "get_broadcast", "wait_signal",
           "signal_workflow", "continue_as_new", "patched", "deprecate_patch"]


def spawn_task(fn_or_name, args: dict | None = None, *, cache_key=None) -> CodaFuture:
    """Schedule a task (a @coda.task function or a task name); await the result.

    With `cache_key`, the task is identified by its name and that key: a replay, or a
    retried attempt of the workflow, gets the recorded result instead of running it again.
    """
    definition = sdk.definition_of(fn_or_name)
    if isinstance(definition, sdk.TaskDefinition):
        name, options = definition.name, {
            "retry": definition.retry.to_wire(),
            "start_to_close_timeout_s": definition.start_to_close_timeout_s,
            "schedule_to_start_timeout_s": definition.schedule_to_start_timeout_s,
            "heartbeat_timeout_s": definition.heartbeat_timeout_s}
    elif isinstance(fn_or_name, str):
        name, options = validate.type_name(fn_or_name, "task name"), {}
    else:
        raise InvalidArgument(f"spawn_task takes a @coda.task function or a task name, got "
                              f"{fn_or_name!r}", field="task")
    if args is not None and not isinstance(args, dict):
        raise InvalidArgument(f"task args must be a dict of keyword arguments, got "
                              f"{type(args).__name__}", field="args")
    return current_run().spawn_task(name, args or {}, cache_key, options)


def spawn_workflow(fn_or_name, args: dict | None = None, *, workflow_id: str | None = None,
                   execution_timeout: float | None = None) -> CodaFuture:
    """Start a child workflow (a @coda.workflow function or a type name); await its result.

    `workflow_id` defaults to "<parent id>/child-<n>". The child is started once, however
    often the parent replays; if it fails, the await raises ChildWorkflowFailedError.
    """
    definition = sdk.definition_of(fn_or_name)
    if isinstance(definition, sdk.WorkflowDefinition):
        name = definition.name
        timeout_s = execution_timeout or definition.execution_timeout_s
    elif isinstance(fn_or_name, str):
        name, timeout_s = validate.type_name(fn_or_name, "workflow type"), execution_timeout
    else:
        raise InvalidArgument(f"spawn_workflow takes a @coda.workflow function or a workflow "
                              f"type name, got {fn_or_name!r}", field="workflow")
    if args is not None and not isinstance(args, dict):
        raise InvalidArgument(f"child workflow args must be a dict of keyword arguments, got "
                              f"{type(args).__name__}", field="args")
    if workflow_id is not None:
        validate.workflow_id(workflow_id)
    options = {"execution_timeout_ms": int(timeout_s * 1000)} if timeout_s else {}
    return current_run().spawn_workflow(name, args or {}, workflow_id, options)


SLEEP_S_MAX = limits.timer_delay_ms_max / 1000


def sleep(seconds: float) -> CodaFuture:
    """A durable sleep: `await coda.context.sleep(30)`. The workflow holds no process
    while it waits; the timer lives in Flow and survives restarts and failovers."""
    if (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
            or not 0 <= seconds <= SLEEP_S_MAX):
        raise InvalidArgument(f"sleep takes 0..{SLEEP_S_MAX} seconds, got {seconds!r}",
                              field="seconds")
    return current_run().start_timer(int(round(seconds * 1000)))


def wait_for(awaitable, timeout: float) -> CodaFuture:
    """`await coda.context.wait_for(fut, 30)`: fut's result, or TimeoutError after a
    durable timer of `timeout` seconds. The awaited task keeps running; its result stays
    in history (await it again to get it)."""
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or not 0 <= timeout <= SLEEP_S_MAX):
        raise InvalidArgument(f"wait_for takes a timeout of 0..{SLEEP_S_MAX} seconds, got "
                              f"{timeout!r}", field="timeout")
    return deadline(awaitable, timeout)


def sleep_until(when: datetime.datetime) -> CodaFuture:
    """Sleep until a time (an aware datetime; naive ones are refused, not guessed)."""
    if not isinstance(when, datetime.datetime) or when.tzinfo is None:
        raise InvalidArgument("sleep_until takes a timezone-aware datetime", field="when")
    return sleep(max(0.0, (when - now()).total_seconds()))


def await_all(futures) -> CodaFuture:
    """Await several spawned tasks; their results in order (the first failure raises)."""
    return all_of(futures)


gather = await_all


def now() -> datetime.datetime:
    """The workflow's clock: the time of the latest history event it has seen (UTC)."""
    return current_run().now()


def random() -> float:
    """A random float in [0, 1), the same on every replay of this run."""
    return current_run().random()


def uuid4() -> uuid.UUID:
    """A UUID, the same on every replay of this run."""
    return current_run().uuid4()


def workflow_id() -> str:
    return current_run().info.workflow_id


def heartbeat(details=None) -> None:
    """Inside a task: report progress (and keep a heartbeat timeout from firing). The
    latest details reach the next attempt if this one fails (`TaskInfo.heartbeat_details`)."""
    task_context.heartbeat(details)


def idempotency_key() -> str:
    """Inside a task: a key stable across its retries and its workflow's replays; hand it
    to external services so a retried call is not applied twice."""
    return task_context.idempotency_key()


def task_info() -> task_context.TaskInfo:
    """Inside a task: its workflow id, run id, key, attempt (1, 2, ...), idempotency key
    and the heartbeat details its previous attempt recorded."""
    info = task_context.current_task()
    if info is None:
        raise InvalidArgument(f"coda.context.task_info() {task_context.OUTSIDE_TASK_HINT}")
    return info


# --- state, broadcast variables, signals (docs/state-and-signals.md) ----------------------

def set_state(key: str, value) -> None:
    """Publish a value under `key` (str, <= 64 bytes): clients read it with
    `handle.get_state(key)`, other workflows with `get_state(key, workflow_id=...)`. It
    becomes visible when the current workflow task commits, and is recorded in history."""
    current_run().set_state(key, value)


def get_state(key: str, *, workflow_id: str | None = None, default=MISSING) -> CodaFuture:
    """`await get_state(key)`: this run's own value; with `workflow_id`, the current run
    of another workflow, read through Flow (linearizable at the time of the read) and
    recorded in history so a replay returns the same. A missing key or workflow raises
    NotFound unless `default` is given."""
    run = current_run()
    check_read_default(default)
    key = state_key(key)
    if workflow_id is None or workflow_id == run.info.workflow_id:
        future = CodaFuture(f"state {key!r}")
        try:
            future.set_result(run.own_state(key, default))
        except Exception as exc:
            future.set_error(exc)
        return future
    return run.read("state", {"workflow_id": validate.workflow_id(workflow_id), "key": key},
                    default)


def get_broadcast(name: str, *, default=MISSING):
    """The value of a broadcast variable.

    In a workflow: `await get_broadcast(name)`, served from the supervisor's cache (kept
    fresh by a watch on Flow) and recorded in history (version, and the value when it is
    new to this run), so a replay returns what this run saw; a run never sees an older
    version than it saw before. In an async task: `await get_broadcast(name)` (the latest
    version the supervisor has). In a sync task it blocks and returns the value.
    A name never set (or deleted) raises NotFound unless `default` is given."""
    check_read_default(default)
    name = validate.identifier(name, "broadcast name", limits.broadcast_name_bytes_max)
    if _current.get(None) is not None:
        return current_run().read("broadcast", {"name": name}, default)
    return task_context.get_broadcast(name, default)


def wait_signal(name: str, timeout: float | None = None) -> CodaFuture:
    """`payload = await wait_signal(name)`: the oldest signal of that name not yet taken
    (signals sent before the wait are buffered, in order). With `timeout` (seconds, a
    durable timer): TimeoutError if none came; a later signal stays buffered."""
    name = validate.identifier(name, "signal name", limits.signal_name_bytes_max)
    run = current_run()
    waiter = run.wait_signal(name)
    if timeout is None:
        return waiter
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or not 0 <= timeout <= SLEEP_S_MAX):
        raise InvalidArgument(f"wait_signal takes a timeout of 0..{SLEEP_S_MAX} seconds, got "
                              f"{timeout!r}", field="timeout")
    return deadline(waiter, timeout)


def signal_workflow(workflow_id: str, name: str, payload=None) -> CodaFuture:
    """Send a signal to another workflow's current run; await it to know it was
    delivered (NotFound if that workflow is unknown or not running). Sent once, however
    often this workflow replays."""
    validate.workflow_id(workflow_id)
    name = validate.identifier(name, "signal name", limits.signal_name_bytes_max)
    return current_run().signal_workflow(workflow_id, name, payload)


# --- long-lived workflows (docs/long-lived-workflows.md) ----------------------------------

def continue_as_new(args: dict | None = None) -> None:
    """End this run as CONTINUED_AS_NEW and start a fresh run of the same workflow (same
    id and type, empty history) with keyword arguments `args`, in one committed step.
    Raises (never returns); a client waiting on the workflow follows it to the new run."""
    if args is not None and not isinstance(args, dict):
        raise InvalidArgument(f"continue_as_new args must be a dict of keyword arguments, "
                              f"got {type(args).__name__}", field="args")
    current_run().continue_as_new(args or {})


def patched(patch_id: str) -> bool:
    """Change a running workflow's code safely:

        if coda.context.patched("send-sms"):
            await coda.context.spawn_task(send_sms, ...)      # the new code
        else:
            await coda.context.spawn_task(send_email, ...)    # what old runs recorded

    True for new executions (a marker goes into history) and for replays of histories
    that have the marker; False for replays of histories recorded before the change.
    Decided once per run: later calls with the same id answer the same."""
    validate.identifier(patch_id, "patch id", limits.type_name_bytes_max)
    return current_run().patched(patch_id)


def deprecate_patch(patch_id: str) -> None:
    """Once no run recorded before the change remains (`coda workflow list` shows
    them), replace `if patched(id): new else: old` by `deprecate_patch(id)` and the new
    code alone: histories with and without the marker both replay the new code."""
    validate.identifier(patch_id, "patch id", limits.type_name_bytes_max)
    current_run()  # only inside a workflow, like patched()
