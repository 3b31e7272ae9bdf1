"""Schedules in the shard state machine (pure). A schedule lives on the shard its id hashes
to; the runs it starts live on their own workflows' shards, reached through the outbox
(flow.sm_children.put_outbox) like child workflows:

    schedule shard                                  run's shard
    timer (next nominal time + jitter) fires
      overlap policy says start ──outbox: start_scheduled──▶ start_workflow {schedule}
                                                             ... the run ...
    run_closed ◀───────────────outbox: schedule_run_closed── close()
      (start what was buffered)
      CANCEL_OTHER / TERMINATE_OTHER ──outbox: close_run───▶ cancel / terminate

No nominal time runs twice: a nominal time is acted on in the same transaction that moves
`next_nominal_ms` past it; its run's workflow id is `<schedule id>-<nominal time, UTC ISO>`,
started with REJECT_DUPLICATE and a request id derived from both, so a redelivered start
is answered from the request log, and a second start of the same id (a backfill of a time
that ran, a recreated schedule) is refused and shown in `recent`.

A run started by a schedule carries a retry deadline: the schedule's next nominal time.
Its retries (workflow retries and task retries) stop at that deadline, so a failing run
never slides into the next run's slot (flow.sm_workflows, flow.sm_tasks).
"""

from __future__ import annotations

from coda.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from coda.flow import limits, model, schedule_spec, validate
from coda.flow import sm_common as c
from coda.flow import sm_children
from coda.storage import codec, keys

SKIP = "SKIP"
BUFFER_ONE = "BUFFER_ONE"
BUFFER_ALL = "BUFFER_ALL"
CANCEL_OTHER = "CANCEL_OTHER"
TERMINATE_OTHER = "TERMINATE_OTHER"
ALLOW_ALL = "ALLOW_ALL"
OVERLAP_POLICIES = (SKIP, BUFFER_ONE, BUFFER_ALL, CANCEL_OTHER, TERMINATE_OTHER, ALLOW_ALL)

CATCHUP_WINDOW_MS_DEFAULT = 365 * 24 * 3600 * 1000   # Temporal's default: a year
CATCHUP_WINDOW_MS_MIN = 1000
META_SCHEDULES_COUNT = b"schedules_count"
NOTE_BYTES_MAX = 1024


def schedule_key(schedule_id: str) -> bytes:
    return schedule_id.encode()


def load(txn, schedule_id: str) -> dict | None:
    raw = txn.get(keys.SCHEDULES, schedule_key(schedule_id))
    return codec.unpack(raw) if raw is not None else None


def _save(ctx: c.Ctx, record: dict) -> None:
    ctx.txn.put(keys.SCHEDULES, schedule_key(record["schedule_id"]), codec.pack(record))


def _existing(ctx: c.Ctx, body: dict) -> dict:
    schedule_id = schedule_id_of(body.get("schedule_id"))
    record = load(ctx.txn, schedule_id)
    if record is None:
        raise NotFound(f"schedule {schedule_id!r} not found", schedule_id=schedule_id)
    return record


# --- validation ----------------------------------------------------------------------------

def schedule_id_of(value) -> str:
    return validate.identifier(value, "schedule_id", limits.schedule_id_bytes_max)


def overlap_of(value, field: str = "overlap") -> str:
    if not isinstance(value, str) or value.upper() not in OVERLAP_POLICIES:
        raise InvalidArgument(f"unknown overlap policy {value!r}; one of "
                              f"{', '.join(OVERLAP_POLICIES)}", field=field)
    return value.upper()


def _policy(policy) -> dict:
    if not isinstance(policy, dict):
        raise InvalidArgument("a schedule policy must be a map", field="policy")
    window_ms = policy.get("catchup_window_ms") or CATCHUP_WINDOW_MS_DEFAULT
    if type(window_ms) is not int or not CATCHUP_WINDOW_MS_MIN <= window_ms <= 2**62:
        raise InvalidArgument(f"catchup_window_ms must be at least {CATCHUP_WINDOW_MS_MIN} "
                              f"(1 s), got {window_ms!r}", field="catchup_window_ms")
    return {"overlap": overlap_of(policy.get("overlap") or SKIP),
            "catchup_window_ms": window_ms,
            "pause_on_failure": bool(policy.get("pause_on_failure"))}


def _action(ctx: c.Ctx, action, allow_undeclared_type: bool) -> dict:
    if not isinstance(action, dict):
        raise InvalidArgument("a schedule action must be a map", field="action")
    workflow_type = validate.type_name(action.get("workflow_type"))
    payload = action.get("input")
    if not isinstance(payload, bytes) or len(payload) > limits.payload_bytes_max:
        raise InvalidArgument("the scheduled workflow's input must be msgpack bytes within "
                              "the payload limit", field="input")
    timeout_ms = action.get("execution_timeout_ms") or 0
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise InvalidArgument("execution_timeout_ms must be a non-negative integer",
                              field="execution_timeout_ms")
    if not allow_undeclared_type and not c.is_declared(ctx.txn, "wf", workflow_type):
        raise NotFound(f"no supervisor has declared workflow type {workflow_type!r}; start a "
                       "supervisor for the module that defines it (or allow undeclared types)",
                       workflow_type=workflow_type)
    return {"workflow_type": workflow_type, "input": payload,
            "execution_timeout_ms": timeout_ms}


def _note(body: dict) -> str:
    note = body.get("note") or ""
    if not isinstance(note, str) or len(note.encode()) > NOTE_BYTES_MAX:
        raise InvalidArgument(f"note must be a string of at most {NOTE_BYTES_MAX} bytes",
                              field="note")
    return note


# --- create, update, delete ------------------------------------------------------------------

def create(ctx: c.Ctx, body: dict) -> dict:
    schedule_id = schedule_id_of(body.get("schedule_id"))
    spec = schedule_spec.validate(body.get("spec"))
    action = _action(ctx, body.get("action"), bool(body.get("allow_undeclared_type")))
    policy = _policy(body.get("policy") or {})
    note = _note(body)
    if load(ctx.txn, schedule_id) is not None:
        raise AlreadyExists(f"schedule {schedule_id!r} already exists (update or delete it)",
                            schedule_id=schedule_id)
    count = _count(ctx.txn)
    if count >= limits.schedules_per_shard_max:
        raise ResourceExhausted(f"this shard holds {count} schedules, the limit",
                                limit=limits.schedules_per_shard_max)
    ctx.txn.put(keys.META, META_SCHEDULES_COUNT, keys.u64(count + 1))
    record = {"schedule_id": schedule_id, "spec": spec, "action": action, "policy": policy,
              "paused": bool(body.get("paused")), "note": note, "next_nominal_ms": None,
              "timer": None, "running": [], "buffered": [], "recent": [],
              "counts": {"started": 0, "skipped": 0, "missed": 0}, "starts": 0,
              "created_ms": ctx.time_ms, "updated_ms": ctx.time_ms}
    _plan_from(ctx, record, ctx.time_ms)
    _save(ctx, record)
    return {"schedule_id": schedule_id}


def update(ctx: c.Ctx, body: dict) -> dict:
    """Replace spec, action and policy; the schedule's state (running, buffered, recent,
    paused) stays. The next time is planned afresh from now."""
    record = _existing(ctx, body)
    record["spec"] = schedule_spec.validate(body.get("spec"))
    record["action"] = _action(ctx, body.get("action"), bool(body.get("allow_undeclared_type")))
    record["policy"] = _policy(body.get("policy") or {})
    record["buffered"] = record["buffered"][:_buffer_max(record["policy"]["overlap"])]
    record["updated_ms"] = ctx.time_ms
    _plan_from(ctx, record, ctx.time_ms)
    _save(ctx, record)
    return {"schedule_id": record["schedule_id"]}


def delete(ctx: c.Ctx, body: dict) -> dict:
    """The schedule goes; runs it started run on (their close reports find no schedule)."""
    record = _existing(ctx, body)
    c.clear_timers(ctx.txn, [record["timer"]])
    ctx.txn.delete(keys.SCHEDULES, schedule_key(record["schedule_id"]))
    ctx.txn.put(keys.META, META_SCHEDULES_COUNT, keys.u64(max(0, _count(ctx.txn) - 1)))
    return {"schedule_id": record["schedule_id"]}


def _count(txn) -> int:
    raw = txn.get(keys.META, META_SCHEDULES_COUNT)
    return keys.from_u64(raw) if raw else 0


# --- pause, unpause, trigger, backfill -------------------------------------------------------

def patch(ctx: c.Ctx, body: dict) -> dict:
    record = _existing(ctx, body)
    op = body.get("op")
    if op == "pause":
        record["paused"], record["note"] = True, _note(body)
        _disarm(ctx, record)
    elif op == "unpause":
        # Times that passed while paused are not caught up: a pause means "do nothing".
        record["paused"], record["note"] = False, _note(body)
        _plan_from(ctx, record, ctx.time_ms)
    elif op == "trigger":
        overlap = overlap_of(body["overlap"]) if body.get("overlap") else None
        _act(ctx, record, ctx.time_ms, overlap, "trigger")
    elif op == "backfill":
        _backfill(ctx, record, body)
    else:
        raise InvalidArgument(f"unknown schedule operation {op!r}; one of pause, unpause, "
                              "trigger, backfill", field="op")
    record["updated_ms"] = ctx.time_ms
    _save(ctx, record)
    return {"schedule_id": record["schedule_id"]}


def _backfill(ctx: c.Ctx, record: dict, body: dict) -> None:
    """Every nominal time in [start, end] is acted on now, under the overlap policy given
    (default: the schedule's). The catch-up window does not apply."""
    start_ms, end_ms = body.get("start_time_ms"), body.get("end_time_ms")
    if type(start_ms) is not int or type(end_ms) is not int or not 0 <= start_ms <= end_ms:
        raise InvalidArgument("a backfill needs integer start_time_ms <= end_time_ms",
                              field="start_time_ms")
    overlap = overlap_of(body["overlap"]) if body.get("overlap") else None
    times = []
    nominal = schedule_spec.next_after(record["spec"], start_ms - 1)
    while nominal is not None and nominal <= end_ms:
        if len(times) >= limits.schedule_backfill_times_max:
            raise InvalidArgument(f"the backfill range holds more than "
                                  f"{limits.schedule_backfill_times_max} nominal times; "
                                  "backfill a shorter range", field="end_time_ms")
        times.append(nominal)
        nominal = schedule_spec.next_after(record["spec"], nominal)
    if not times:
        raise InvalidArgument("the schedule has no nominal time in that range",
                              field="start_time_ms")
    for nominal in times:
        _act(ctx, record, nominal, overlap, "backfill")


# --- firing --------------------------------------------------------------------------------

def _plan_from(ctx: c.Ctx, record: dict, after_ms: int) -> None:
    record["next_nominal_ms"] = schedule_spec.next_after(record["spec"], after_ms)
    _arm(ctx, record)


def _arm(ctx: c.Ctx, record: dict) -> None:
    _disarm(ctx, record)
    nominal = record["next_nominal_ms"]
    if nominal is None or record["paused"]:
        return
    fire_ms = nominal + schedule_spec.jitter_ms(record["spec"], record["schedule_id"], nominal)
    record["timer"] = c.set_timer(ctx, fire_ms, record["schedule_id"], {
        "kind": c.TIMER_SCHEDULE, "key": str(nominal), "nominal_ms": nominal})


def _disarm(ctx: c.Ctx, record: dict) -> None:
    c.clear_timers(ctx.txn, [record.get("timer")])
    record["timer"] = None


def fire(ctx: c.Ctx, timer: dict) -> None:
    """The schedule's timer: act on every nominal time now due (bounded per firing; the
    rest are due at once on the next one). Times older than the catch-up window are
    recorded as missed, not run."""
    record = load(ctx.txn, timer["workflow_id"])
    if record is None or record["paused"] or record["next_nominal_ms"] != timer["nominal_ms"]:
        return  # deleted, paused or replanned since: a stale timer
    record["timer"] = None
    spec, window_ms = record["spec"], record["policy"]["catchup_window_ms"]
    nominal = record["next_nominal_ms"]
    for _ in range(limits.schedule_times_per_fire_max):
        if nominal is None or _fire_ms(record, nominal) > ctx.time_ms:
            break
        if ctx.time_ms - _fire_ms(record, nominal) > window_ms:
            resume = schedule_spec.next_after(spec, ctx.time_ms - window_ms - 1)
            _record(record, {"action": "missed", "nominal_ms": nominal,
                             "detail": "outside the catch-up window of "
                                       f"{window_ms} ms"}, ctx.time_ms)
            record["counts"]["missed"] += 1
            nominal = resume
            continue
        following = schedule_spec.next_after(spec, nominal)
        _act(ctx, record, nominal, None, "schedule")
        nominal = following
    record["next_nominal_ms"] = nominal
    _arm(ctx, record)
    _save(ctx, record)


def _fire_ms(record: dict, nominal: int) -> int:
    return nominal + schedule_spec.jitter_ms(record["spec"], record["schedule_id"], nominal)


def _act(ctx: c.Ctx, record: dict, nominal: int, overlap: str | None, source: str) -> None:
    """One nominal time's action under the overlap policy."""
    overlap = overlap or record["policy"]["overlap"]
    running = record["running"]
    if not running or overlap == ALLOW_ALL:
        if len(running) >= limits.schedule_running_max:
            _skip(ctx, record, nominal, source, f"{len(running)} runs are running, the limit")
        else:
            _start(ctx, record, nominal, source)
    elif overlap == SKIP:
        _skip(ctx, record, nominal, source, "a run is still running (overlap SKIP)")
    elif overlap in (BUFFER_ONE, BUFFER_ALL):
        if len(record["buffered"]) >= _buffer_max(overlap):
            _skip(ctx, record, nominal, source, f"the buffer is full (overlap {overlap})")
        else:
            _buffer(ctx, record, nominal, source)
    elif overlap == CANCEL_OTHER:
        # Start once the cancelled runs have closed; a newer time replaces a buffered one.
        _close_running(ctx, record, "cancel")
        for dropped in record["buffered"]:
            _skip(ctx, record, dropped["nominal_ms"], dropped["source"],
                  "replaced by a newer time (overlap CANCEL_OTHER)")
        record["buffered"] = []
        _buffer(ctx, record, nominal, source)
    elif overlap == TERMINATE_OTHER:
        _close_running(ctx, record, "terminate")
        _start(ctx, record, nominal, source)


def _buffer_max(overlap: str) -> int:
    if overlap in (BUFFER_ONE, CANCEL_OTHER):
        return 1
    return limits.schedule_buffer_max if overlap == BUFFER_ALL else 0


def _buffer(ctx: c.Ctx, record: dict, nominal: int, source: str) -> None:
    record["buffered"].append({"nominal_ms": nominal, "source": source})
    _record(record, {"action": "buffered", "nominal_ms": nominal, "source": source},
            ctx.time_ms)


def _skip(ctx: c.Ctx, record: dict, nominal: int, source: str, why: str) -> None:
    record["counts"]["skipped"] += 1
    _record(record, {"action": "skipped", "nominal_ms": nominal, "source": source,
                     "detail": why}, ctx.time_ms)


def run_workflow_id(schedule_id: str, nominal_ms: int) -> str:
    return f"{schedule_id}-{schedule_spec.iso(nominal_ms)}"


def _start(ctx: c.Ctx, record: dict, nominal: int, source: str) -> None:
    schedule_id, action = record["schedule_id"], record["action"]
    workflow_id = run_workflow_id(schedule_id, nominal)
    if any(r["workflow_id"] == workflow_id for r in record["running"]):
        _skip(ctx, record, nominal, source, f"run {workflow_id} is already running")
        return
    # One request id per start decision: a redelivery of this entry is answered from the
    # request log; another decision for the same time (a backfill) is refused as a duplicate.
    record["starts"] = record.get("starts", 0) + 1
    # Retries stop when the schedule's next time is due (from now, for a backfilled time).
    deadline = schedule_spec.next_after(record["spec"], max(nominal, ctx.time_ms))
    sm_children.put_outbox(ctx, {
        "kind": "start_scheduled", "workflow_id": workflow_id,
        "workflow_type": action["workflow_type"], "input": action["input"],
        "execution_timeout_ms": action["execution_timeout_ms"],
        "request_id": "sched-" + keys.digest(schedule_id, str(nominal), str(record["starts"])),
        "schedule": {"schedule_id": schedule_id, "nominal_ms": nominal},
        "retry_deadline_ms": deadline or 0})
    record["running"].append({"workflow_id": workflow_id, "nominal_ms": nominal,
                              "closing": None})
    record["counts"]["started"] += 1
    _record(record, {"action": "started", "nominal_ms": nominal, "source": source,
                     "workflow_id": workflow_id}, ctx.time_ms)


def _close_running(ctx: c.Ctx, record: dict, how: str) -> None:
    for run in record["running"]:
        if run["closing"]:
            continue
        run["closing"] = how
        sm_children.put_outbox(ctx, {
            "kind": "close_run", "workflow_id": run["workflow_id"], "how": how,
            "request_id": f"sched-{how}-" + keys.digest(run["workflow_id"]),
            "reason": f"schedule {record['schedule_id']!r}: a newer run is due "
                      f"(overlap {'CANCEL_OTHER' if how == 'cancel' else 'TERMINATE_OTHER'})"})


def _record(record: dict, action: dict, time_ms: int) -> None:
    record["recent"].append(dict(action, at_ms=time_ms))
    del record["recent"][:-limits.schedule_recent_actions_max]


# --- what comes back from the runs ----------------------------------------------------------

def notify(ctx: c.Ctx, run: dict) -> None:
    """A run a schedule started closed (called from sm_workflows.close): tell the schedule."""
    schedule = run.get("schedule")
    if schedule:
        sm_children.put_outbox(ctx, {
            "kind": "schedule_run_closed", "route": schedule["schedule_id"],
            "workflow_id": run["workflow_id"], "schedule_id": schedule["schedule_id"],
            "status": run["status"]})


def run_closed(ctx: c.Ctx, body: dict) -> dict:
    """On the schedule's shard: a run it started closed. Buffered times may start now."""
    record = load(ctx.txn, schedule_id_of(body.get("schedule_id")))
    workflow_id = validate.workflow_id(body.get("workflow_id"))
    status = str(body.get("status") or model.FAILED)
    if record is None or not _forget_run(record, workflow_id):
        return {"applied": False}
    for action in record["recent"]:
        if action.get("workflow_id") == workflow_id and action["action"] == "started":
            action["status"] = status
    if record["policy"]["pause_on_failure"] and status in (model.FAILED, model.TIMED_OUT):
        record["paused"] = True
        record["note"] = f"paused: run {workflow_id} closed {status} (pause_on_failure)"
        _disarm(ctx, record)
    _drain_buffer(ctx, record)
    _save(ctx, record)
    return {"applied": True}


def start_refused(ctx: c.Ctx, entry: dict, error: dict) -> None:
    """The run's shard refused a start (the id ran already, a bad type): shown in recent."""
    schedule = entry["schedule"]
    record = load(ctx.txn, schedule["schedule_id"])
    if record is None or not _forget_run(record, entry["workflow_id"]):
        return  # (a start of an id already running is skipped before it is sent)
    record["counts"]["started"] -= 1
    _record(record, {"action": "refused", "nominal_ms": schedule["nominal_ms"],
                     "workflow_id": entry["workflow_id"],
                     "detail": f"{error.get('code')}: {error.get('message', '')}"[:1024]},
            ctx.time_ms)
    _drain_buffer(ctx, record)
    _save(ctx, record)


def _forget_run(record: dict, workflow_id: str) -> bool:
    kept = [r for r in record["running"] if r["workflow_id"] != workflow_id]
    found = len(kept) < len(record["running"])
    record["running"] = kept
    return found


def _drain_buffer(ctx: c.Ctx, record: dict) -> None:
    if record["buffered"] and not record["running"]:
        first = record["buffered"].pop(0)
        _start(ctx, record, first["nominal_ms"], first["source"])
