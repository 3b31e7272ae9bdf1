"""Supervisors, assignments and completions in the shard state machine (pure).

The leader's dispatcher proposes `assign` with queue entries it picked; apply re-checks
each one (a queue entry can be gone or stale by then) and commits the assignment with its
attempt. A supervisor's registration (every session's hello) says what it still runs:
any other assignment of it was lost in transit and is re-queued. A supervisor whose lease
passed is expired by the leader: all its assignments are re-queued under their policies.
"""

from __future__ import annotations

from coda.errors import InvalidArgument, NotFound
from coda.flow import limits, validate
from coda.flow import sm_common as c
from coda.flow import sm_tasks, sm_workflows
from coda.storage import codec, keys


def queues_of(workflow_types, task_types, build_id: str = "") -> tuple[str, ...]:
    """The durable queues a supervisor takes from: its runs pinned to its build first,
    then unpinned workflow tasks, then tasks (any build runs any task)."""
    pinned = [keys.workflow_queue_name(t, build_id) for t in workflow_types] if build_id else []
    return tuple(pinned + [keys.workflow_queue_name(t) for t in workflow_types]
                 + [keys.task_queue_name(t) for t in task_types])


def supervisor_id(value) -> str:
    return validate.identifier(value, "supervisor_id", limits.supervisor_id_bytes_max)


def _types(value, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > limits.types_per_supervisor_max:
        raise InvalidArgument(f"{field} must be a list of at most "
                              f"{limits.types_per_supervisor_max} names", field=field)
    return [validate.type_name(name, field) for name in value]


def build_id_of(value) -> str:
    """A build id, or "" (unversioned: its supervisor pins nothing)."""
    if value in (None, ""):
        return ""
    return validate.identifier(value, "build_id", limits.build_id_bytes_max)


def _declare_workflow(ctx: c.Ctx, name: str, build_id: str, upgradable: bool) -> None:
    declared = c.declared_workflow(ctx.txn, name)
    builds = dict(declared.get("builds") or {})
    if build_id and build_id not in builds:
        builds[build_id] = ctx.time_ms
        while len(builds) > limits.builds_per_type_max:  # the longest known goes
            del builds[min(builds, key=lambda b: (builds[b], b))]
    ctx.txn.put(keys.DECLARED_TYPES, keys.declared_type_key("wf", name),
                codec.pack({"builds": builds, "upgradable": upgradable}))


def register(ctx: c.Ctx, body: dict) -> dict:
    sid = supervisor_id(body.get("supervisor_id"))
    workflow_types = _types(body.get("workflow_types", []), "workflow_types")
    task_types = _types(body.get("task_types", []), "task_types")
    running = body.get("running", [])
    if not isinstance(running, list) or len(running) > limits.running_items_per_hello_max:
        raise InvalidArgument("running must be a list of [workflow_id, run_id, key, attempt]",
                              field="running")
    still = {tuple(item) for item in running if isinstance(item, list) and len(item) == 4}
    build_id = build_id_of(body.get("build_id"))
    upgradable = set(_types(body.get("upgradable_workflow_types", []),
                            "upgradable_workflow_types"))
    ctx.txn.put(keys.SUPERVISORS, sid.encode(), codec.pack({
        "build_id": build_id, "workflow_types": workflow_types,
        "task_types": task_types, "registered_ms": ctx.time_ms}))
    for name in workflow_types:
        _declare_workflow(ctx, name, build_id, name in upgradable)
    for name in task_types:
        ctx.txn.put(keys.DECLARED_TYPES, keys.declared_type_key("task", name), b"")
    requeued = 0
    for assignment in c.assignments_of(ctx.txn, sid):
        item = (assignment["workflow_id"], assignment["run_id"], assignment["key"],
                assignment["attempt"])
        if item not in still:
            _lost(ctx, sid, assignment, "DispatchLost")
            requeued += 1
    return {"requeued": requeued}


def expire(ctx: c.Ctx, body: dict) -> dict:
    sid = supervisor_id(body.get("supervisor_id"))
    lost = c.assignments_of(ctx.txn, sid)
    for assignment in lost:
        _lost(ctx, sid, assignment, "SupervisorLost")
    ctx.txn.delete(keys.SUPERVISORS, sid.encode())
    return {"requeued": len(lost)}


def _lost(ctx: c.Ctx, sid: str, assignment: dict, reason: str) -> None:
    if assignment["key"] == c.WFT:
        sm_workflows.wft_lost(ctx, assignment, reason)
    else:
        sm_tasks.lost(ctx, assignment, reason)
        # Its last attempt lost: the task failed for good, which the workflow must see.
        sm_workflows.wake_run(ctx, assignment["workflow_id"], assignment["run_id"])
    # Also when the item had moved on (the handlers then change nothing): this supervisor
    # no longer holds it.
    ctx.txn.delete(keys.ASSIGNMENTS, keys.assignment_key(
        sid, assignment["workflow_id"], assignment["run_id"], assignment["key"]))


def assign(ctx: c.Ctx, body: dict) -> dict:
    sid = supervisor_id(body.get("supervisor_id"))
    raw_supervisor = ctx.txn.get(keys.SUPERVISORS, sid.encode())
    if raw_supervisor is None:
        raise NotFound(f"supervisor {sid!r} is not registered on this shard", supervisor_id=sid)
    build_id = codec.unpack(raw_supervisor).get("build_id") or ""
    items = body.get("items")
    if not isinstance(items, list) or len(items) > limits.assign_items_max:
        raise InvalidArgument(f"assign items must be a list of at most {limits.assign_items_max}",
                              field="items")
    assigned = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and type(item[1]) is int):
            raise InvalidArgument("an assign item is [queue, seq]", field="items")
        done = _assign_entry(ctx, sid, build_id, *item)
        if done is not None:
            assigned.append(done)
    dispatch_id = body.get("dispatch_id")
    if assigned and isinstance(dispatch_id, str):
        # Sent from the effects (flow.dispatcher.on_effects), which the leader acts on
        # as the command commits whether or not its proposer still waits: an answer
        # lost to a timeout no longer leaves the items assigned and never sent.
        ctx.assigned.append([sid, dispatch_id, assigned])
    return {"assigned": assigned}


def _assign_entry(ctx: c.Ctx, sid: str, build_id: str, queue: str, seq: int) -> dict | None:
    """Assign one queue entry (None if it is gone or stale)."""
    raw = ctx.txn.get(keys.QUEUES, keys.queue_key(queue, seq))
    if raw is None:
        return None
    entry = codec.unpack(raw)
    if entry["kind"] == "wft":
        return sm_workflows.assign(ctx, sid, build_id, entry, queue, seq)
    return sm_tasks.assign(ctx, sid, entry, queue, seq)


def eager_of(body: dict) -> tuple[str, int] | None:
    """A command's `eager` {supervisor_id, items} (completions, starts), checked."""
    eager = body.get("eager")
    if eager is None:
        return None
    if not (isinstance(eager, dict) and type(eager.get("items")) is int
            and 1 <= eager["items"] <= limits.eager_items_per_completion_max):
        raise InvalidArgument(f"eager is {{supervisor_id, items: 1.."
                              f"{limits.eager_items_per_completion_max}}}", field="eager")
    return supervisor_id(eager.get("supervisor_id")), eager["items"]


def assign_eagerly(ctx: c.Ctx, sid: str, items_max: int, request_id) -> None:
    """Eager dispatch: the entries this command queued (the workflow task a task's result
    wakes, the tasks a workflow task spawned, a new run's first workflow task) go straight
    to the supervisor the leader named, in the same command, up to the credit it set
    aside, and only from queues that supervisor takes from: no `assign` commit per step.
    What was assigned is an effect, not the answer: a retried request, answered from the
    dedup table, must not make the leader dispatch (and a task run) again."""
    if not ctx.enqueued:
        return
    raw_supervisor = ctx.txn.get(keys.SUPERVISORS, sid.encode())
    if raw_supervisor is None:
        return
    record = codec.unpack(raw_supervisor)
    build_id = record.get("build_id") or ""
    takes = set(queues_of(record.get("workflow_types", ()), record.get("task_types", ()),
                          build_id))
    assigned = []
    for queue, seq in ctx.enqueued:
        if len(assigned) >= items_max:
            break
        if queue in takes:
            done = _assign_entry(ctx, sid, build_id, queue, seq)
            if done is not None:
                assigned.append(done)
    if assigned:
        ctx.assigned.append([sid, request_id, assigned])


def complete(ctx: c.Ctx, body: dict) -> dict:
    """One completion from a supervisor: a workflow task's commands or failure, a task's
    result or failure. A stale one is answered {rejected: why} (final, changes nothing).
    With `eager`, what it queued may be assigned to that supervisor at once (state_machine)."""
    wid = validate.workflow_id(body.get("workflow_id"))
    run_id = validate.run_id(body.get("run_id"))
    key = body.get("key", c.WFT)
    attempt = body.get("attempt")
    if not isinstance(key, str) or type(attempt) is not int:
        raise InvalidArgument("a completion needs a task key and an integer attempt",
                              field="attempt")
    if key == c.WFT:
        record, why = sm_workflows.running_wft(ctx, wid, run_id, attempt)
        if record is None:
            return {"rejected": why}
        if "commands" in body:
            sm_workflows.complete_wft(ctx, record, body["commands"], c.history_limits(body))
        else:
            sm_workflows.fail_wft(ctx, record, _failure(body.get("failure")))
        return {"accepted": True}
    found, why = sm_tasks.running_attempt(ctx, wid, run_id, key, attempt)
    if found is None:
        return {"rejected": why}
    task, record = found
    if "result" in body:
        result = body["result"]
        if not isinstance(result, bytes) or len(result) > limits.payload_bytes_max:
            sm_tasks.attempt_failed(ctx, task, record, {
                "type": "PayloadError", "message": f"the result of task {task['task']} is "
                f"not msgpack bytes within {limits.payload_bytes_max} bytes"}, retryable=False)
        else:
            chained = body.get("then_workflow_task")
            why = chained_wft_refusal(ctx, record, chained) if chained is not None else None
            if chained is not None and why is None:
                sm_tasks.complete(ctx, task, record, result, chained["completed_time_ms"])
                sm_workflows.complete_chained_wft(ctx, record, chained["supervisor_id"],
                                                  chained["commands"], c.history_limits(body))
                return {"accepted": True, "chained": "accepted"}
            sm_tasks.complete(ctx, task, record, result)
            if chained is not None:
                sm_workflows.wake(ctx, record)
                c.save_workflow(ctx.txn, record)
                return {"accepted": True, "chained": why}
    else:
        failure = _failure(body.get("failure"))
        retryable = not failure.pop("non_retryable", False)
        if record.get("cancel_requested") and failure["type"] == "CancelledError":
            # It stopped because its workflow was cancelled (Flow told it to): running it
            # again would undo the cancel while the workflow cleans up.
            retryable = False
        sm_tasks.attempt_failed(ctx, task, record, failure, retryable=retryable)
    sm_workflows.wake(ctx, record)
    c.save_workflow(ctx.txn, record)
    return {"accepted": True}


def chained_wft_refusal(ctx: c.Ctx, record: dict, chained) -> str | None:
    """Why the workflow task a supervisor ran on a task's result can't commit with it
    (None: it can). It ran on the history the supervisor holds plus that TaskCompleted;
    it is the workflow task the run would get next only if nothing else is pending or
    was appended since, and only if that supervisor could have been assigned it. Its
    TaskCompleted keeps the supervisor's time (what `now()` saw), within a bounded skew
    of the leader's. Refused, the result alone commits and a workflow task is queued as
    usual: the chain is an optimization, never a different outcome."""
    if not (isinstance(chained, dict) and type(chained.get("seen_event_id")) is int
            and type(chained.get("completed_time_ms")) is int
            and type(chained.get("workflow_attempt")) is int
            and isinstance(chained.get("commands"), list)
            and len(chained["commands"]) <= limits.workflow_task_commands_max
            and isinstance(chained.get("supervisor_id"), str)):
        return "malformed"
    if record["wft"] or record.get("wft_needed") or record.get("cancel_requested"):
        return "the run has a workflow task pending"
    if chained["seen_event_id"] != record["history_length"] + 1:
        return "the history moved on"
    if chained["workflow_attempt"] != record["attempt"]:
        return "another workflow attempt"  # its code may branch on the attempt's seed
    if abs(chained["completed_time_ms"] - ctx.time_ms) > limits.chained_wft_clock_skew_ms:
        return "clock skew"
    raw_supervisor = ctx.txn.get(keys.SUPERVISORS, chained["supervisor_id"].encode())
    if raw_supervisor is None:
        return "supervisor not registered"
    supervisor = codec.unpack(raw_supervisor)
    build_id = supervisor.get("build_id") or ""
    if (record.get("build_id") or "") != build_id or record["queue"] not in queues_of(
            supervisor.get("workflow_types", ()), (), build_id):
        return "the supervisor does not take this run's workflow tasks"
    return None


def _failure(failure) -> dict:
    if not isinstance(failure, dict):
        failure = {}
    return {"type": str(failure.get("type") or "Error")[:255],
            "message": str(failure.get("message") or "")[:8192],
            "stack": str(failure.get("stack") or "")[:16384],
            "non_retryable": bool(failure.get("non_retryable"))}


def heartbeat(ctx: c.Ctx, body: dict) -> dict:
    wid = validate.workflow_id(body.get("workflow_id"))
    run_id = validate.run_id(body.get("run_id"))
    found, why = sm_tasks.running_attempt(ctx, wid, run_id, str(body.get("key")),
                                          body.get("attempt"))
    if found is None:
        return {"rejected": why}
    details = body.get("details")
    if details is not None and (not isinstance(details, bytes)
                                or len(details) > limits.task_heartbeat_details_bytes_max):
        raise InvalidArgument("heartbeat details must be msgpack bytes within "
                              f"{limits.task_heartbeat_details_bytes_max} bytes", field="details")
    sm_tasks.heartbeat(ctx, found[0], details)
    return {"accepted": True}
