"""Task lifecycle in the shard state machine (pure).

    ScheduleTask ─▶ QUEUED ─assign─▶ RUNNING ─result─▶ COMPLETED (TaskCompleted event)
                      ▲                 │ failure, timeout, supervisor lost
                      └──retry timer── BACKOFF        or, retries exhausted:
                                                       FAILED (TaskFailed event)

Every assignment has a fresh attempt number; a completion must carry the attempt of the
running assignment, or it is rejected (fencing: a task that ran on a supervisor declared
dead can't overwrite the result of its retry). A terminal task event wakes the workflow
(a workflow task is queued).
"""

from __future__ import annotations

from coda.errors import InvalidArgument, LimitExceeded
from coda.flow import limits, retry, validate
from coda.flow import sm_common as c
from coda.storage import keys


def _timeout_ms(options: dict, name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise InvalidArgument(f"task option {name} must be a positive number of seconds",
                              field=name)
    return int(value * 1000)


def schedule(ctx: c.Ctx, record: dict, command: dict) -> None:
    """A ScheduleTask command of a workflow task: record it, queue it (or fail it at once
    when no supervisor ever declared the task type: the workflow sees the error where it
    awaits the task)."""
    key = validate.identifier(command.get("key"), "task key", limits.task_key_bytes_max)
    name = validate.type_name(command.get("task"), "task name")
    args = command.get("args")
    if not isinstance(args, bytes) or len(args) > limits.payload_bytes_max:
        raise InvalidArgument(f"args of task {name} must be msgpack bytes within the payload "
                              "limit", field="args")
    options = command.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("task options must be a map", field="options")
    policy = retry.validate(options.get("retry"), "retry")
    timeouts = {n: _timeout_ms(options, n + "_s") for n in
                ("start_to_close_timeout", "schedule_to_start_timeout", "heartbeat_timeout")}
    wid, run_id = record["workflow_id"], record["run_id"]
    if c.load_task(ctx.txn, wid, run_id, key) is not None:
        return  # scheduled before (the same cache_key again): one task, one result
    if record.get("open_tasks", 0) >= limits.open_tasks_per_run_max:
        raise LimitExceeded(f"workflow {wid} has {record['open_tasks']} open tasks, the "
                            f"limit is {limits.open_tasks_per_run_max}", field="tasks")
    c.append_history(ctx, record, {"type": "TaskScheduled", "key": key, "task": name})
    task = {"workflow_id": wid, "run_id": run_id, "key": key, "task": name, "args": args,
            "retry": policy, "timeouts_ms": timeouts, "attempt": 0, "status": c.QUEUED,
            "idempotency_key": str(command.get("idempotency_key") or f"{wid}/{key}")[:512],
            "scheduled_ms": ctx.time_ms, "supervisor": None, "seq": None, "timers": {},
            "heartbeat_details": None}
    if not c.is_declared(ctx.txn, "task", name):
        _fail_for_good(ctx, record, task, {
            "type": "UnknownTaskType", "message": f"no supervisor has declared task type "
            f"{name!r}; is the module that defines it running under a supervisor?"})
        return
    record["open_tasks"] = record.get("open_tasks", 0) + 1
    if timeouts["schedule_to_start_timeout"]:
        task["timers"][c.TIMER_SCHEDULE_TO_START] = c.set_timer(
            ctx, ctx.time_ms + timeouts["schedule_to_start_timeout"], wid,
            {"kind": c.TIMER_SCHEDULE_TO_START, "run_id": run_id, "key": key, "attempt": 1})
    _enqueue(ctx, task)


def _enqueue(ctx: c.Ctx, task: dict) -> None:
    task["attempt"] += 1
    task["status"] = c.QUEUED
    task["supervisor"] = None
    task["seq"] = c.enqueue(ctx, keys.task_queue_name(task["task"]), {
        "kind": "task", "workflow_id": task["workflow_id"], "run_id": task["run_id"],
        "key": task["key"], "attempt": task["attempt"], "enqueued_ms": ctx.time_ms})
    c.save_task(ctx.txn, task)


def assign(ctx: c.Ctx, supervisor_id: str, entry: dict, queue: str, seq: int) -> dict | None:
    """Start the queued attempt on a supervisor; None if the entry is stale."""
    task = c.load_task(ctx.txn, entry["workflow_id"], entry["run_id"], entry["key"])
    if task is None or task["status"] != c.QUEUED or task["attempt"] != entry["attempt"]:
        return None
    c.dequeue(ctx.txn, queue, seq)
    record = c.current_run(ctx.txn, task["workflow_id"], task["run_id"])
    if record is None:
        return None
    c.clear_timers(ctx.txn, task["timers"].values())  # a queued task's: schedule-to-start
    task["timers"] = {}
    task.update(status=c.RUNNING, supervisor=supervisor_id, seq=None, started_ms=ctx.time_ms)
    for kind, name in ((c.TIMER_START_TO_CLOSE, "start_to_close_timeout"),
                       (c.TIMER_HEARTBEAT, "heartbeat_timeout")):
        if task["timeouts_ms"].get(name):
            task["timers"][kind] = _attempt_timer(ctx, task, kind, task["timeouts_ms"][name])
    c.add_assignment(ctx.txn, supervisor_id, task["workflow_id"], task["run_id"], task["key"],
                     task["attempt"])
    c.append_history(ctx, record, {"type": "TaskStarted", "key": task["key"],
                                   "attempt": task["attempt"], "supervisor": supervisor_id})
    c.save_workflow(ctx.txn, record)
    c.save_task(ctx.txn, task)
    return {"kind": "task", "workflow_id": task["workflow_id"], "run_id": task["run_id"],
            "key": task["key"], "attempt": task["attempt"]}


def _attempt_timer(ctx: c.Ctx, task: dict, kind: str, after_ms: int) -> bytes:
    return c.set_timer(ctx, ctx.time_ms + after_ms, task["workflow_id"], {
        "kind": kind, "run_id": task["run_id"], "key": task["key"], "attempt": task["attempt"]})


def running_attempt(ctx: c.Ctx, workflow_id: str, run_id: str, key: str, attempt: int):
    """(task, record) if that attempt is the one running, else (None, reason)."""
    task = c.load_task(ctx.txn, workflow_id, run_id, key)
    if task is None:
        return None, f"no task {key!r} in run {run_id} of {workflow_id!r}"
    if task["status"] != c.RUNNING or task["attempt"] != attempt:
        return None, (f"stale attempt {attempt} of task {key!r} (the task is {task['status']}, "
                      f"attempt {task['attempt']})")
    record = c.current_run(ctx.txn, workflow_id, run_id)
    if record is None:
        return None, f"run {run_id} of {workflow_id!r} is closed"
    return (task, record), None


def complete(ctx: c.Ctx, task: dict, record: dict, result: bytes,
             time_ms: int | None = None) -> None:
    _stop_attempt(ctx, task)
    task.update(status=c.COMPLETED, args=None)
    c.save_task(ctx.txn, task)
    record["open_tasks"] = max(0, record.get("open_tasks", 1) - 1)
    c.append_history(ctx, record, {"type": "TaskCompleted", "key": task["key"], "result": result,
                                   "attempt": task["attempt"]}, time_ms)
    record["wft_needed"] = True


def attempt_failed(ctx: c.Ctx, task: dict, record: dict, error: dict, retryable: bool) -> None:
    """An attempt ended without a result: retry under the task's policy, or fail it."""
    _stop_attempt(ctx, task)
    policy = task["retry"]
    retry_at_ms = ctx.time_ms + retry.delay_ms(policy, task["attempt"])
    if c.past_retry_deadline(record, retry_at_ms):
        retryable = False
        error = dict(error, message=(f"{error.get('message', '')} (not retried: the schedule's next "
                                     "run is due before the retry)")[:8192])
    if retryable and retry.retries_after(policy, task["attempt"], error["type"]):
        task["status"] = c.BACKOFF
        task["last_error"] = error  # for describe: why the task is waiting to retry
        task["timers"] = {c.TIMER_TASK_RETRY: c.set_timer(ctx, retry_at_ms, task["workflow_id"], {
            "kind": c.TIMER_TASK_RETRY, "run_id": task["run_id"], "key": task["key"],
            "attempt": task["attempt"]})}
        c.save_task(ctx.txn, task)
        c.append_history(ctx, record, {"type": "TaskAttemptFailed", "key": task["key"],
                                       "attempt": task["attempt"], "error": error,
                                       "retry_at_ms": retry_at_ms})
        return
    record["open_tasks"] = max(0, record.get("open_tasks", 1) - 1)
    _fail_for_good(ctx, record, task, error)


def _fail_for_good(ctx: c.Ctx, record: dict, task: dict, error: dict) -> None:
    task.update(status=c.FAILED, args=None, timers={})
    c.save_task(ctx.txn, task)
    c.append_history(ctx, record, {"type": "TaskFailed", "key": task["key"], "error": error,
                                   "attempt": task["attempt"]})
    record["wft_needed"] = True


def _stop_attempt(ctx: c.Ctx, task: dict) -> None:
    c.clear_timers(ctx.txn, task["timers"].values())
    task["timers"] = {}
    c.remove_assignment(ctx.txn, task["supervisor"], task["workflow_id"], task["run_id"],
                        task["key"])


def retry_due(ctx: c.Ctx, timer: dict) -> None:
    task = c.load_task(ctx.txn, timer["workflow_id"], timer["run_id"], timer["key"])
    if task is None or task["status"] != c.BACKOFF or task["attempt"] != timer["attempt"]:
        return
    if c.current_run(ctx.txn, task["workflow_id"], task["run_id"]) is None:
        return
    task["timers"] = {}
    _enqueue(ctx, task)


def timed_out(ctx: c.Ctx, timer: dict) -> None:
    """A start-to-close, heartbeat or schedule-to-start timeout of one attempt."""
    task = c.load_task(ctx.txn, timer["workflow_id"], timer["run_id"], timer["key"])
    if task is None or task["attempt"] != timer["attempt"]:
        return
    record = c.current_run(ctx.txn, task["workflow_id"], task["run_id"])
    if record is None:
        return
    kind = timer["kind"]
    task["timers"].pop(kind, None)  # fire_timers deleted its row
    error = {"type": {c.TIMER_START_TO_CLOSE: "StartToCloseTimeout",
                      c.TIMER_HEARTBEAT: "HeartbeatTimeout",
                      c.TIMER_SCHEDULE_TO_START: "ScheduleToStartTimeout"}[kind],
             "message": f"task {task['task']} ({task['key']}) attempt {task['attempt']}: "
                        f"{kind.replace('_', '-')} timeout"}
    if kind == c.TIMER_SCHEDULE_TO_START:
        if task["status"] != c.QUEUED:
            return
        c.dequeue(ctx.txn, keys.task_queue_name(task["task"]), task["seq"])
        # Waiting longer in the queue would not help: no retry (Temporal's rule too).
        attempt_failed(ctx, task, record, error, retryable=False)
    else:
        if task["status"] != c.RUNNING:
            return
        ctx.cancel.append([task["supervisor"], task["workflow_id"], task["run_id"], task["key"],
                           task["attempt"]])
        attempt_failed(ctx, task, record, error, retryable=True)
    c.save_workflow(ctx.txn, record)


def heartbeat(ctx: c.Ctx, task: dict, details) -> None:
    task["heartbeat_details"] = details
    if task["timeouts_ms"].get("heartbeat_timeout"):
        c.clear_timers(ctx.txn, [task["timers"].pop(c.TIMER_HEARTBEAT, None)])
        task["timers"][c.TIMER_HEARTBEAT] = _attempt_timer(
            ctx, task, c.TIMER_HEARTBEAT, task["timeouts_ms"]["heartbeat_timeout"])
    c.save_task(ctx.txn, task)


def cancel_open(ctx: c.Ctx, record: dict) -> None:
    """The run closed: its open tasks end CANCELLED; running ones are told to stop."""
    for task in c.open_tasks(ctx.txn, record["workflow_id"], record["run_id"]):
        if task["status"] == c.QUEUED and task["seq"] is not None:
            c.dequeue(ctx.txn, keys.task_queue_name(task["task"]), task["seq"])
        if task["status"] == c.RUNNING:
            ctx.cancel.append([task["supervisor"], task["workflow_id"], task["run_id"],
                               task["key"], task["attempt"]])
        _stop_attempt(ctx, task)
        task.update(status=c.CANCELLED, args=None, seq=None)
        c.save_task(ctx.txn, task)
    record["open_tasks"] = 0


def cancel_requested(ctx: c.Ctx, record: dict) -> None:
    """The workflow is being cancelled: running tasks are told to stop (their
    CancelledError is final); tasks not yet started never start, and fail CancelledError
    (the workflow may still await them while it cleans up)."""
    for task in c.open_tasks(ctx.txn, record["workflow_id"], record["run_id"]):
        if task["status"] == c.RUNNING:
            ctx.cancel.append([task["supervisor"], task["workflow_id"], task["run_id"],
                               task["key"], task["attempt"]])
            continue
        if task["status"] == c.QUEUED and task["seq"] is not None:
            c.dequeue(ctx.txn, keys.task_queue_name(task["task"]), task["seq"])
        _stop_attempt(ctx, task)
        task["seq"] = None
        record["open_tasks"] = max(0, record.get("open_tasks", 1) - 1)
        _fail_for_good(ctx, record, task, {
            "type": "CancelledError", "message": "its workflow was cancelled before it started"})


def lost(ctx: c.Ctx, assignment: dict, reason: str) -> None:
    """Its supervisor died or never got the dispatch: the attempt failed (retryable)."""
    task = c.load_task(ctx.txn, assignment["workflow_id"], assignment["run_id"], assignment["key"])
    if task is None or task["status"] != c.RUNNING or task["attempt"] != assignment["attempt"]:
        return
    record = c.current_run(ctx.txn, task["workflow_id"], task["run_id"])
    if record is None:
        return
    attempt_failed(ctx, task, record, {"type": reason, "message":
                   f"attempt {task['attempt']} was lost: {reason} ({task['supervisor']})"},
                   retryable=True)
    c.save_workflow(ctx.txn, record)
