"""Workflow runs and workflow tasks in the shard state machine (pure).

A run's record (`workflows` db) holds its status, its workflow attempt (retries replay
the same history), and the state of its workflow task ("wft"):

    None ──events──▶ queued ──assign──▶ running ──commands──▶ None (or queued again if
                       ▲                    │ failure            events came meanwhile)
                       └───timer─────── backoff

`wft_needed` says the history has events no dispatched workflow task has seen. The
commands of a workflow task are applied in one command: tasks scheduled, the run closed,
or the workflow retried — atomically with the `WorkflowTaskCompleted` marker that tells
replay how much history that workflow task saw.
"""

from __future__ import annotations

from coda.errors import AlreadyExists, InvalidArgument, NotFound
from coda.flow import limits, model, retry, validate
from coda.flow import sm_common as c
from coda.flow import sm_children, sm_schedules, sm_state, sm_tasks
from coda.storage import codec, keys


# --- starting and closing ----------------------------------------------------------------

def start(ctx: c.Ctx, body: dict) -> dict:
    workflow_id = validate.workflow_id(body.get("workflow_id"))
    workflow_type = validate.type_name(body.get("workflow_type"))
    run_id = validate.run_id(body.get("run_id"))
    request_id = validate.request_id(body.get("request_id"))
    policy = body.get("reuse_policy", model.ALLOW_DUPLICATE)
    if not isinstance(policy, str) or policy not in model.REUSE_POLICIES:
        raise InvalidArgument(f"unknown workflow id reuse policy {policy!r}; "
                              f"one of {', '.join(model.REUSE_POLICIES)}", field="reuse_policy")
    payload = body.get("input")
    if not isinstance(payload, bytes) or len(payload) > limits.payload_bytes_max:
        raise InvalidArgument("workflow input must be msgpack bytes within the payload limit",
                              field="input")
    timeout_ms = body.get("execution_timeout_ms") or 0
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise InvalidArgument("execution_timeout_ms must be a non-negative integer",
                              field="execution_timeout_ms")
    if not body.get("allow_undeclared_type", True) and not c.is_declared(
            ctx.txn, "wf", workflow_type):
        raise NotFound(f"no supervisor has declared workflow type {workflow_type!r}; start a "
                       "supervisor for the module that defines it (or allow undeclared types)",
                       workflow_type=workflow_type)

    current = c.load_workflow(ctx.txn, workflow_id)
    if current is not None:
        if current["request_id"] == request_id:
            # A retry of the start that created this run: same answer, nothing new.
            return {"run_id": current["run_id"], "started": False}
        _make_room_for_new_run(ctx, current, policy)

    _begin_run(ctx, {
        "workflow_id": workflow_id, "run_id": run_id, "workflow_type": workflow_type,
        "request_id": request_id, "input": payload, "execution_timeout_ms": timeout_ms,
        "parent": _parent(body.get("parent")), "schedule": _schedule(body.get("schedule")),
        "retry_deadline_ms": _deadline(body.get("retry_deadline_ms"))})
    return {"run_id": run_id, "started": True}


def _begin_run(ctx: c.Ctx, run: dict, continued_from: str | None = None) -> dict:
    """A new current run of `run["workflow_id"]`: its record, WorkflowExecutionStarted,
    its execution timeout, its first workflow task. The caller made room for it."""
    workflow_id, run_id = run["workflow_id"], run["run_id"]
    timeout_ms = run["execution_timeout_ms"]
    declared = c.declared_workflow(ctx.txn, run["workflow_type"])
    # Pinned to the newest build of its type (new code for new runs), unless the type is
    # upgradable: then its workflow tasks wait in the type's unpinned queue, which every
    # build's supervisors serve (patched() makes each build replay older steps the old
    # way). Choosing the build when a task is queued would strand it there if that build
    # went away before a supervisor took it.
    versioning = "upgrade" if declared.get("upgradable") else "pinned"
    build_id = None if versioning == "upgrade" else c.default_build(declared)
    record = {
        "workflow_id": workflow_id, "run_id": run_id, "workflow_type": run["workflow_type"],
        "status": model.RUNNING, "start_time_ms": ctx.time_ms, "close_time_ms": None,
        "request_id": run["request_id"], "attempt": 1, "history_length": 0,
        "queue": keys.workflow_queue_name(run["workflow_type"], build_id), "queue_seq": None,
        "build_id": build_id, "versioning": versioning,
        "result": None, "failure": None, "wft": None, "wft_attempt": 0, "wft_needed": True,
        "wft_failures": 0, "open_tasks": 0, "cancel_requested": False, "timers": [],
        "parent": run["parent"], "schedule": run["schedule"],
        "retry_deadline_ms": run["retry_deadline_ms"], "execution_timeout_ms": timeout_ms,
        "continued_from": continued_from,
    }
    started = {"type": "WorkflowExecutionStarted", "workflow_type": run["workflow_type"],
               "input": run["input"], "request_id": run["request_id"],
               "execution_timeout_ms": timeout_ms}
    if record["schedule"]:
        started["schedule"] = record["schedule"]
    if continued_from:
        started["continued_from"] = continued_from
    c.append_history(ctx, record, started)
    if timeout_ms:
        record["timers"].append(c.set_timer(ctx, ctx.time_ms + timeout_ms, workflow_id, {
            "kind": c.TIMER_EXECUTION_TIMEOUT, "run_id": run_id}))
    wake(ctx, record)
    c.save_workflow(ctx.txn, record)
    return record


def _parent(parent) -> dict | None:
    """The parent of a child workflow's run: {workflow_id, run_id, key}."""
    if parent is None:
        return None
    if not isinstance(parent, dict):
        raise InvalidArgument("parent must be a map", field="parent")
    return {"workflow_id": validate.workflow_id(parent.get("workflow_id")),
            "run_id": validate.run_id(parent.get("run_id")),
            "key": validate.identifier(parent.get("key"), "parent key",
                                       limits.task_key_bytes_max)}


def _schedule(schedule) -> dict | None:
    """The schedule that started this run: {schedule_id, nominal_ms}."""
    if schedule is None:
        return None
    if not isinstance(schedule, dict) or type(schedule.get("nominal_ms")) is not int:
        raise InvalidArgument("schedule must be a map with schedule_id and nominal_ms",
                              field="schedule")
    return {"schedule_id": sm_schedules.schedule_id_of(schedule.get("schedule_id")),
            "nominal_ms": schedule["nominal_ms"]}


def _deadline(deadline_ms) -> int:
    if deadline_ms is None:
        return 0
    if type(deadline_ms) is not int or deadline_ms < 0:
        raise InvalidArgument("retry_deadline_ms must be a non-negative integer",
                              field="retry_deadline_ms")
    return deadline_ms


def _make_room_for_new_run(ctx: c.Ctx, current: dict, policy: str) -> None:
    """Apply the reuse policy to the workflow's current run, or raise AlreadyExists."""
    workflow_id, status = current["workflow_id"], current["status"]
    if status == model.RUNNING:
        if policy != model.TERMINATE_IF_RUNNING:
            raise AlreadyExists(
                f"workflow {workflow_id!r} is already running (run {current['run_id']}); "
                f"reuse policy {policy} does not allow a second run",
                workflow_id=workflow_id, run_id=current["run_id"])
        close(ctx, current, model.TERMINATED,
              failure={"type": "Terminated",
                       "message": "terminated by a new start with TERMINATE_IF_RUNNING"})
    elif policy == model.REJECT_DUPLICATE or (
            policy == model.ALLOW_DUPLICATE_FAILED_ONLY
            and status not in model.UNSUCCESSFUL_STATUSES):
        raise AlreadyExists(
            f"workflow {workflow_id!r} already ran (run {current['run_id']}, {status}); "
            f"reuse policy {policy} does not allow another run",
            workflow_id=workflow_id, run_id=current["run_id"])
    keep_closed_run(ctx, current)


def keep_closed_run(ctx: c.Ctx, record: dict) -> None:
    """A closed run moves to `runs` (describe and history by run id still work); past
    `closed_runs_per_workflow_max` of one id, the oldest goes, with its history, tasks
    and state, so a workflow that continues as new for ever keeps bounded storage."""
    workflow_id = record["workflow_id"]
    ctx.txn.put(keys.RUNS, keys.run_key(workflow_id, record["run_id"]), codec.pack(record))
    closed = [codec.unpack(raw) for _, raw in
              ctx.txn.scan(keys.RUNS, prefix=keys.workflow_key(workflow_id) + keys.SEP)]
    if len(closed) <= limits.closed_runs_per_workflow_max:
        return
    oldest = min(closed, key=lambda r: (r.get("close_time_ms") or 0, r["run_id"]))
    _forget_run(ctx, workflow_id, oldest["run_id"])


def _forget_run(ctx: c.Ctx, workflow_id: str, run_id: str) -> None:
    ctx.txn.delete(keys.RUNS, keys.run_key(workflow_id, run_id))
    for db, prefix in ((keys.HISTORY, keys.history_prefix(workflow_id, run_id)),
                       (keys.TASKS, keys.tasks_prefix(workflow_id, run_id)),
                       (keys.STATE, keys.state_prefix(workflow_id, run_id))):
        doomed = [bytes(k) for k, _ in ctx.txn.scan(db, prefix=prefix)]
        for key in doomed:  # after the scan: no cursor open while the db changes
            ctx.txn.delete(db, key)


CLOSING_EVENTS = {model.COMPLETED: "WorkflowExecutionCompleted",
                  model.FAILED: "WorkflowExecutionFailed",
                  model.CANCELLED: "WorkflowExecutionCanceled",
                  model.TERMINATED: "WorkflowExecutionTerminated",
                  model.TIMED_OUT: "WorkflowExecutionTimedOut",
                  model.CONTINUED_AS_NEW: "WorkflowExecutionContinuedAsNew"}


def close(ctx: c.Ctx, record: dict, status: str, *, result: bytes | None = None,
          failure: dict | None = None, event_fields: dict | None = None) -> None:
    """Close the run: its workflow task and timers go, its open tasks are cancelled.
    A run that continued as new is not the workflow's end: its parent and schedule hear
    of the last run's close instead."""
    _drop_wft(ctx, record)
    c.clear_timers(ctx.txn, record.get("timers"))
    record["timers"] = []
    sm_tasks.cancel_open(ctx, record)
    record.update(status=status, close_time_ms=ctx.time_ms, result=result, failure=failure,
                  wft_needed=False)
    event = {"type": CLOSING_EVENTS[status]}
    if result is not None:
        event["result"] = result
    if failure is not None:
        event["failure"] = failure
    c.append_history(ctx, record, dict(event, **(event_fields or {})))
    ctx.closed.append(record["workflow_id"])
    if status != model.CONTINUED_AS_NEW:
        sm_children.notify_parent(ctx, record)
        sm_schedules.notify(ctx, record)


# --- workflow tasks ----------------------------------------------------------------------

def wake(ctx: c.Ctx, record: dict) -> None:
    """Queue a workflow task if the run has unseen events and none is queued or waiting."""
    if record["status"] != model.RUNNING or not record.get("wft_needed") or record["wft"]:
        return
    record["wft_attempt"] += 1
    seq = c.enqueue(ctx, record["queue"], {
        "kind": "wft", "workflow_id": record["workflow_id"], "run_id": record["run_id"],
        "attempt": record["wft_attempt"], "enqueued_ms": ctx.time_ms})
    record["wft"] = {"state": "queued", "attempt": record["wft_attempt"], "seq": seq}
    record["queue_seq"] = seq


def wake_run(ctx: c.Ctx, workflow_id: str, run_id: str) -> None:
    """`wake` for a run a task handler changed and saved (a timeout, a lost supervisor):
    a task that failed for good is news its workflow must see."""
    record = c.current_run(ctx.txn, workflow_id, run_id)
    if record is not None and record.get("wft_needed") and not record["wft"]:
        wake(ctx, record)
        c.save_workflow(ctx.txn, record)


def _drop_wft(ctx: c.Ctx, record: dict) -> None:
    wft = record.get("wft")
    if not wft:
        return
    if wft["state"] == "queued":
        c.dequeue(ctx.txn, record["queue"], wft["seq"])
    elif wft["state"] == "running":
        c.remove_assignment(ctx.txn, wft["supervisor"], record["workflow_id"],
                            record["run_id"], c.WFT)
    elif wft["state"] == "backoff":
        c.clear_timers(ctx.txn, [wft["timer"]])
    record["wft"] = None
    record["queue_seq"] = None


def assign(ctx: c.Ctx, supervisor_id: str, build_id: str, entry: dict, queue: str,
           seq: int) -> dict | None:
    """Assign a queued workflow task to a supervisor of build `build_id` ("" unversioned)."""
    record = c.current_run(ctx.txn, entry["workflow_id"], entry["run_id"])
    wft = record and record["wft"]
    if not wft or wft["state"] != "queued" or wft["attempt"] != entry["attempt"]:
        return None
    if record.get("build_id") and build_id != record["build_id"]:
        return None  # pinned to another build: it waits for a supervisor of that one
    c.dequeue(ctx.txn, queue, seq)
    if (not record.get("build_id") and build_id and record.get("versioning") != "upgrade"
            and not c.declared_workflow(ctx.txn, record["workflow_type"]).get("upgradable")):
        # A pinned run that started before any build was known: it stays on this one.
        record["build_id"] = build_id
        record["queue"] = keys.workflow_queue_name(record["workflow_type"], build_id)
    record["wft"] = {"state": "running", "attempt": wft["attempt"], "supervisor": supervisor_id,
                     "seen": record["history_length"]}
    record["queue_seq"] = None
    record["wft_needed"] = False
    c.add_assignment(ctx.txn, supervisor_id, record["workflow_id"], record["run_id"], c.WFT,
                     wft["attempt"])
    c.save_workflow(ctx.txn, record)
    return {"kind": "wft", "workflow_id": record["workflow_id"], "run_id": record["run_id"],
            "key": c.WFT, "attempt": wft["attempt"], "history_length": record["history_length"],
            "workflow_attempt": record["attempt"], "start_time_ms": record["start_time_ms"],
            "workflow_type": record["workflow_type"]}


def running_wft(ctx: c.Ctx, workflow_id: str, run_id: str, attempt: int):
    """(record, None) if that workflow task attempt is the running one, else (None, why)."""
    record = c.current_run(ctx.txn, workflow_id, run_id)
    if record is None:
        return None, f"run {run_id} of {workflow_id!r} is not running"
    wft = record["wft"]
    if not wft or wft["state"] != "running" or wft["attempt"] != attempt:
        return None, f"stale workflow task attempt {attempt} of {workflow_id!r}"
    return record, None


def _end_wft(ctx: c.Ctx, record: dict) -> None:
    wft = record["wft"]
    if not wft.get("chained"):  # a chained one was never assigned (complete_chained_wft)
        c.remove_assignment(ctx.txn, wft["supervisor"], record["workflow_id"],
                            record["run_id"], c.WFT)
    record["wft"] = None


def complete_chained_wft(ctx: c.Ctx, record: dict, supervisor_id: str, commands: list,
                         history_limit: tuple[int, int]) -> None:
    """A workflow task the supervisor ran as soon as a task's result was in, committed
    with that result (sm_supervisors.chained_wft_refusal said it saw the whole history):
    as if it had been queued, assigned to that supervisor and completed, in one command."""
    record["wft_attempt"] += 1
    record["wft"] = {"state": "running", "attempt": record["wft_attempt"],
                     "supervisor": supervisor_id, "seen": record["history_length"],
                     "chained": True}
    record["wft_needed"] = False
    complete_wft(ctx, record, commands, history_limit)


def complete_wft(ctx: c.Ctx, record: dict, commands: list,
                 history_limit: tuple[int, int] | None = None) -> None:
    """Apply a workflow task's commands, after the marker of what it saw. A run whose
    history reached its limit is failed instead (HistoryLimitExceeded)."""
    if not isinstance(commands, list) or len(commands) > limits.workflow_task_commands_max:
        raise InvalidArgument(f"workflow commands must be a list of at most "
                              f"{limits.workflow_task_commands_max}", field="workflow_commands")
    history_limit = history_limit or c.history_limits({})
    seen = record["wft"]["seen"]
    _end_wft(ctx, record)
    if c.history_full(record, history_limit):
        _history_limit_exceeded(ctx, record, history_limit)
        return
    record["wft_failures"] = 0
    record["wft_failure"] = None
    c.append_history(ctx, record, {"type": "WorkflowTaskCompleted", "seen_event_id": seen,
                                   "attempt": record["attempt"]})
    for command in commands:
        if record["status"] != model.RUNNING:
            break  # nothing after a closing command counts
        _apply_workflow_command(ctx, record, command)
    if record["status"] == model.CONTINUED_AS_NEW:
        return  # the record went to `runs`; the new run's record is the current one
    _note_history_size(ctx, record, history_limit)
    wake(ctx, record)
    c.save_workflow(ctx.txn, record)


def _note_history_size(ctx: c.Ctx, record: dict, history_limit: tuple[int, int]) -> None:
    """From history_warning_percent of its limit a run is told (describe, metrics) to
    continue as new."""
    if not record.get("continue_as_new_suggested") and c.history_full(
            record, history_limit, limits.history_warning_percent):
        record["continue_as_new_suggested"] = True
        ctx.history_warnings.append(record["workflow_id"])


def _history_limit_exceeded(ctx: c.Ctx, record: dict, history_limit: tuple[int, int]) -> None:
    events, size = history_limit
    close(ctx, record, model.FAILED, failure={
        "type": "HistoryLimitExceeded",
        "message": f"workflow {record['workflow_id']} run {record['run_id']} has "
                   f"{record['history_length']} history events / "
                   f"{record.get('history_bytes', 0)} bytes; the limit is {events} events / "
                   f"{size} bytes. A workflow that runs this long should continue as new "
                   "(coda.context.continue_as_new) before it gets there"})
    c.save_workflow(ctx.txn, record)


def _apply_workflow_command(ctx: c.Ctx, record: dict, command) -> None:
    kind = command.get("type") if isinstance(command, dict) else None
    if kind == "ScheduleTask":
        sm_tasks.schedule(ctx, record, command)
    elif kind == "StartChildWorkflow":
        sm_children.schedule(ctx, record, command)
    elif kind == "StartTimer":
        _start_timer(ctx, record, command)
    elif kind == "SetState":
        sm_state.set_state(ctx, record, command)
    elif kind == "RecordRead":
        sm_state.record_read(ctx, record, command)
    elif kind == "SignalExternal":
        sm_state.signal_external(ctx, record, command)
    elif kind == "CompleteWorkflow":
        result = command.get("result")
        if not isinstance(result, bytes) or len(result) > limits.payload_bytes_max:
            raise InvalidArgument("a workflow result must be msgpack bytes within the payload "
                                  "limit", field="result")
        close(ctx, record, model.COMPLETED, result=result)
    elif kind == "FailWorkflow":
        _workflow_failed(ctx, record, _error(command.get("error")),
                         retry.validate(command.get("retry"), "retry"))
    elif kind == "RecordMarker":
        _record_marker(ctx, record, command)
    elif kind == "ContinueAsNew":
        continue_as_new(ctx, record, command)
    elif kind == "CancelWorkflow":
        close(ctx, record, model.CANCELLED, failure={
            "type": "CancelledError", "message": str(command.get("reason") or "cancelled")[:4096]})
    else:
        raise InvalidArgument(f"unknown workflow command {kind!r}", field="workflow_commands")


def _record_marker(ctx: c.Ctx, record: dict, command: dict) -> None:
    """A versioning marker (coda.context.patched): only history, read by replays."""
    if command.get("kind") != "patch":
        raise InvalidArgument(f"unknown marker kind {command.get('kind')!r}", field="kind")
    patch_id = validate.identifier(command.get("patch_id"), "patch id",
                                   limits.type_name_bytes_max)
    c.append_history(ctx, record, {"type": "MarkerRecorded", "kind": "patch",
                                   "patch_id": patch_id})


def continue_as_new(ctx: c.Ctx, record: dict, command: dict) -> None:
    """End the run CONTINUED_AS_NEW and start the next one, with the same workflow id and
    type, new input and an empty history, in this same command. The new run id is
    derived from the old one (unique as it is, and the same on every replica)."""
    args = command.get("args")
    if not isinstance(args, bytes) or len(args) > limits.payload_bytes_max:
        raise InvalidArgument("continue-as-new args must be msgpack bytes within the payload "
                              "limit", field="args")
    if record["cancel_requested"]:
        # A cancel asked of this workflow is not passed on to a run that never saw it.
        close(ctx, record, model.CANCELLED, failure={
            "type": "CancelledError", "message": "cancelled while continuing as new"})
        return
    new_run_id = keys.digest(record["workflow_id"], record["run_id"], "continued-as-new")
    close(ctx, record, model.CONTINUED_AS_NEW, event_fields={"new_run_id": new_run_id})
    record["continued_as"] = new_run_id
    keep_closed_run(ctx, record)
    _begin_run(ctx, {
        "workflow_id": record["workflow_id"], "run_id": new_run_id,
        "workflow_type": record["workflow_type"], "request_id": record["request_id"],
        "input": args, "execution_timeout_ms": record.get("execution_timeout_ms") or 0,
        "parent": record.get("parent"), "schedule": record.get("schedule"),
        "retry_deadline_ms": record.get("retry_deadline_ms") or 0},
        continued_from=record["run_id"])


def _start_timer(ctx: c.Ctx, record: dict, command: dict) -> None:
    key = validate.identifier(command.get("key"), "timer key", limits.task_key_bytes_max)
    delay_ms = command.get("delay_ms")
    if type(delay_ms) is not int or not 0 <= delay_ms <= limits.timer_delay_ms_max:
        raise InvalidArgument(f"a timer's delay_ms must be an integer in 0.."
                              f"{limits.timer_delay_ms_max}", field="delay_ms")
    if len(record["timers"]) >= limits.open_tasks_per_run_max:
        raise InvalidArgument(f"workflow {record['workflow_id']} has "
                              f"{len(record['timers'])} timers pending", field="timers")
    fire_ms = ctx.time_ms + delay_ms
    c.append_history(ctx, record, {"type": "TimerStarted", "key": key, "fire_at_ms": fire_ms})
    # In the run's timers: closing the run removes it.
    record["timers"].append(c.set_timer(ctx, fire_ms, record["workflow_id"], {
        "kind": c.TIMER_USER, "run_id": record["run_id"], "key": key}))


def timer_fired(ctx: c.Ctx, timer: dict) -> None:
    record = c.current_run(ctx.txn, timer["workflow_id"], timer["run_id"])
    if record is None:
        return
    record["timers"] = [k for k in record["timers"] if ctx.txn.get(keys.TIMERS, k) is not None]
    c.append_history(ctx, record, {"type": "TimerFired", "key": timer["key"]})
    record["wft_needed"] = True
    wake(ctx, record)
    c.save_workflow(ctx.txn, record)


def _error(error) -> dict:
    if not isinstance(error, dict):
        error = {}
    return {"type": str(error.get("type") or "Error")[:255],
            "message": str(error.get("message") or "")[:8192]}


def _workflow_failed(ctx: c.Ctx, record: dict, error: dict, policy: dict) -> None:
    """The workflow raised: retry it by replay under its policy, or close it FAILED."""
    if record["cancel_requested"] or not retry.retries_after(policy, record["attempt"],
                                                             error["type"]):
        close(ctx, record, model.FAILED, failure=error)
        return
    retry_at_ms = ctx.time_ms + retry.delay_ms(policy, record["attempt"])
    if c.past_retry_deadline(record, retry_at_ms):
        close(ctx, record, model.FAILED, failure=dict(error, message=(
            f"{error['message']} (not retried: the schedule's next run is due at "
            f"{record['retry_deadline_ms']} ms, before the retry at {retry_at_ms} ms)")[:8192]))
        return
    c.append_history(ctx, record, {"type": "WorkflowAttemptFailed", "attempt": record["attempt"],
                                   "error": error, "retry_at_ms": retry_at_ms})
    record["attempt"] += 1
    record["wft_needed"] = True
    timer = c.set_timer(ctx, retry_at_ms, record["workflow_id"], {
        "kind": c.TIMER_WORKFLOW_RETRY, "run_id": record["run_id"], "attempt": record["attempt"]})
    record["wft"] = {"state": "backoff", "attempt": record["wft_attempt"], "timer": timer}


def fail_wft(ctx: c.Ctx, record: dict, error: dict) -> None:
    """The worker could not run the workflow task (non-determinism, a crash, an unknown
    type): not the workflow's failure. Retried with backoff, so fixed code resumes it."""
    _end_wft(ctx, record)
    record["wft_failures"] += 1
    record["wft_failure"] = error
    delay_ms = min(limits.workflow_task_retry_initial_ms * 2 ** min(record["wft_failures"] - 1, 16),
                   limits.workflow_task_retry_max_ms)
    c.append_history(ctx, record, {"type": "WorkflowTaskFailed", "error": error,
                                   "retry_at_ms": ctx.time_ms + delay_ms})
    record["wft_needed"] = True
    timer = c.set_timer(ctx, ctx.time_ms + delay_ms, record["workflow_id"], {
        "kind": c.TIMER_WFT_RETRY, "run_id": record["run_id"], "attempt": record["wft_attempt"]})
    record["wft"] = {"state": "backoff", "attempt": record["wft_attempt"], "timer": timer}
    c.save_workflow(ctx.txn, record)


def wft_lost(ctx: c.Ctx, assignment: dict, reason: str) -> None:
    record, _ = running_wft(ctx, assignment["workflow_id"], assignment["run_id"],
                            assignment["attempt"])
    if record is None:
        return
    # Not the code's fault: queue it again at once.
    _end_wft(ctx, record)
    record["wft_needed"] = True
    wake(ctx, record)
    c.save_workflow(ctx.txn, record)


def child_closed(ctx: c.Ctx, body: dict) -> dict:
    outcome = sm_children.child_closed(ctx, body)
    record = outcome.pop("record", None)
    if record is not None:
        wake(ctx, record)
        c.save_workflow(ctx.txn, record)
    return outcome


def outbox_done(ctx: c.Ctx, body: dict) -> dict:
    return sm_children.outbox_done(ctx, body, on_refused={
        "start_child": sm_children.child_refused(child_closed),
        "start_scheduled": sm_schedules.start_refused,
        "signal": _external_signal_refused}, on_done={"signal": _external_signal_sent})


def _external_signal_sent(ctx: c.Ctx, entry: dict) -> None:
    _wake_and_save(ctx, sm_state.external_signal_outcome(ctx, entry, None))


def _external_signal_refused(ctx: c.Ctx, entry: dict, error: dict) -> None:
    _wake_and_save(ctx, sm_state.external_signal_outcome(ctx, entry, error))


def _wake_and_save(ctx: c.Ctx, record: dict | None) -> None:
    if record is not None:
        wake(ctx, record)
        c.save_workflow(ctx.txn, record)


def signal(ctx: c.Ctx, body: dict) -> dict:
    record = sm_state.signal(ctx, body)
    _wake_and_save(ctx, record)
    return {"run_id": record["run_id"]}


def backoff_over(ctx: c.Ctx, timer: dict) -> None:
    """A workflow retry or workflow-task retry timer fired: queue the workflow task."""
    record = c.current_run(ctx.txn, timer["workflow_id"], timer["run_id"])
    if record is None or not record["wft"] or record["wft"]["state"] != "backoff":
        return
    record["wft"] = None
    wake(ctx, record)
    c.save_workflow(ctx.txn, record)


def execution_timed_out(ctx: c.Ctx, timer: dict) -> None:
    record = c.current_run(ctx.txn, timer["workflow_id"], timer["run_id"])
    if record is None:
        return
    record["timers"] = []
    close(ctx, record, model.TIMED_OUT, failure={
        "type": "WorkflowExecutionTimeout", "message": "the workflow ran past its execution "
        f"timeout of {ctx.time_ms - record['start_time_ms']} ms"})
    c.save_workflow(ctx.txn, record)


# --- cancel and terminate ----------------------------------------------------------------

def _target_run(ctx: c.Ctx, body: dict) -> dict:
    workflow_id = validate.workflow_id(body.get("workflow_id"))
    record = c.load_workflow(ctx.txn, workflow_id)
    if record is None:
        raise NotFound(f"workflow {workflow_id!r} not found", workflow_id=workflow_id)
    run_id = body.get("run_id") or record["run_id"]
    if run_id != record["run_id"] or record["status"] != model.RUNNING:
        raise InvalidArgument(f"workflow {workflow_id!r} run {run_id} is not running "
                              f"(current run {record['run_id']} is {record['status']})",
                              field="run_id", workflow_id=workflow_id)
    return record


def cancel(ctx: c.Ctx, body: dict) -> dict:
    record = _target_run(ctx, body)
    if not record["cancel_requested"]:
        record["cancel_requested"] = True
        reason = str(body.get("reason") or "cancel requested")[:4096]
        c.append_history(ctx, record, {"type": "WorkflowCancelRequested", "reason": reason})
        sm_tasks.cancel_requested(ctx, record)
        record["wft_needed"] = True
        if record["wft"] and record["wft"]["state"] == "backoff":
            _drop_wft(ctx, record)  # a cancel is not held back by a retry's backoff
        wake(ctx, record)
        c.save_workflow(ctx.txn, record)
    return {"run_id": record["run_id"]}


def terminate(ctx: c.Ctx, body: dict) -> dict:
    record = _target_run(ctx, body)
    close(ctx, record, model.TERMINATED, failure={
        "type": "Terminated", "message": str(body.get("reason") or "terminated")[:4096]})
    c.save_workflow(ctx.txn, record)
    return {"run_id": record["run_id"]}
