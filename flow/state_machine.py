"""The shard state machine: a pure, deterministic function of (state, command) -> result.

Rule 1 (after h11): everything that changes a shard's state lives here. `apply` reads and
writes only through the `Txn` it is handed; it takes time, run ids and request ids from
the command (stamped by the leader), never from a clock or a random source. It imports no
lmdb, grpc, pysyncobj, asyncio, threading, time, random or os (tests/unit/test_purity.py
walks the imports to keep it so).

Contract with the shell (flow.replica):
- `apply(txn, data)` returns a result map: {"ok": {...}} or {"error": {code, message, details}};
  an ok result may carry "effects" (sm_common.Ctx): what the leader must do after the
  commit, such as telling a supervisor to stop a task.
- A user error raises CodaError inside a handler; `apply` turns it into an error result.
  The shell runs each command in a child transaction and rolls it back when the result is
  an error, so a failed command leaves no partial writes.
- Any other exception is a bug; the shell contains it the same way (Internal error result),
  because an exception escaping apply would wedge the Raft node.
- Replaying an entry at or below the applied index is skipped by the shell, not here.
"""

from __future__ import annotations

from coda.errors import CodaError, InvalidArgument
from coda.flow import commands, limits, validate
from coda.flow import sm_common as c
from coda.flow import sm_schedules, sm_state, sm_supervisors, sm_tasks, sm_workflows
from coda.storage import codec, keys
from coda.storage.txn import Txn


def apply(txn: Txn, data) -> dict:
    try:
        cmd = commands.decode(data)
        handler = _HANDLERS[cmd.kind]
        time_ms = _time_ms(cmd.body)
        _prune_requests(txn, time_ms)
        request_id = cmd.body.get("request_id")
        if request_id is not None:
            validate.request_id(request_id)
            earlier = txn.get(keys.REQUESTS, keys.request_key(request_id))
            if earlier is not None:
                return codec.unpack(earlier)["result"]
        eager = sm_supervisors.eager_of(cmd.body)
        ctx = c.Ctx(txn, time_ms)
        result = {"ok": handler(ctx, cmd.body)}
        if eager is not None:
            sm_supervisors.assign_eagerly(ctx, *eager, request_id)
        effects = ctx.effects()
        if effects:  # for the leader to act on after the commit (flow.dispatcher)
            result["effects"] = effects
        if request_id is not None:
            # The answer, not the effects: a retry answered from this table must not make
            # the leader act again (wake waiters, stop tasks) on what the first one did.
            _remember_request(txn, request_id, time_ms, {"ok": result["ok"]})
        return result
    except CodaError as exc:
        return {"error": exc.to_wire()}


def is_error(result: dict) -> bool:
    return "error" in result


# --- commands ---------------------------------------------------------------------------

def _barrier(ctx: c.Ctx, body: dict) -> dict:
    return {}


def _fire_timers(ctx: c.Ctx, body: dict) -> dict:
    """Timers the leader found due. Each fires once: it is deleted as it fires, and one
    that is not due at the command's stamped time is left alone."""
    timer_keys = body.get("keys")
    if not isinstance(timer_keys, list) or len(timer_keys) > limits.timers_per_fire_max:
        raise InvalidArgument(f"keys must be a list of at most {limits.timers_per_fire_max} "
                              "timer keys", field="keys")
    fired = 0
    for key in timer_keys:
        if not isinstance(key, bytes) or len(key) < 9 or keys.timer_fire_ms(key) > ctx.time_ms:
            continue
        raw = ctx.txn.get(keys.TIMERS, key)
        if raw is None:
            continue
        ctx.txn.delete(keys.TIMERS, key)
        timer = codec.unpack(raw)
        _TIMER_HANDLERS[timer["kind"]](ctx, timer)
        fired += 1
    return {"fired": fired}


def _task_timed_out(ctx: c.Ctx, timer: dict) -> None:
    """A task's timeout: its attempt fails; if that was the last one, the workflow wakes."""
    sm_tasks.timed_out(ctx, timer)
    sm_workflows.wake_run(ctx, timer["workflow_id"], timer["run_id"])


_TIMER_HANDLERS = {
    c.TIMER_TASK_RETRY: sm_tasks.retry_due,
    c.TIMER_START_TO_CLOSE: _task_timed_out,
    c.TIMER_HEARTBEAT: _task_timed_out,
    c.TIMER_SCHEDULE_TO_START: _task_timed_out,
    c.TIMER_WFT_RETRY: sm_workflows.backoff_over,
    c.TIMER_WORKFLOW_RETRY: sm_workflows.backoff_over,
    c.TIMER_EXECUTION_TIMEOUT: sm_workflows.execution_timed_out,
    c.TIMER_USER: sm_workflows.timer_fired,
    c.TIMER_SCHEDULE: sm_schedules.fire,
}

_HANDLERS = {
    commands.START_WORKFLOW: sm_workflows.start,
    commands.BARRIER: _barrier,
    commands.CANCEL_WORKFLOW: sm_workflows.cancel,
    commands.TERMINATE_WORKFLOW: sm_workflows.terminate,
    commands.REGISTER_SUPERVISOR: sm_supervisors.register,
    commands.EXPIRE_SUPERVISOR: sm_supervisors.expire,
    commands.ASSIGN: sm_supervisors.assign,
    commands.COMPLETE: sm_supervisors.complete,
    commands.TASK_HEARTBEAT: sm_supervisors.heartbeat,
    commands.FIRE_TIMERS: _fire_timers,
    commands.CHILD_CLOSED: sm_workflows.child_closed,
    commands.OUTBOX_DONE: sm_workflows.outbox_done,
    commands.CREATE_SCHEDULE: sm_schedules.create,
    commands.UPDATE_SCHEDULE: sm_schedules.update,
    commands.DELETE_SCHEDULE: sm_schedules.delete,
    commands.PATCH_SCHEDULE: sm_schedules.patch,
    commands.SCHEDULE_RUN_CLOSED: sm_schedules.run_closed,
    commands.SIGNAL_WORKFLOW: sm_workflows.signal,
    commands.SET_BROADCAST: sm_state.set_broadcast,
}
assert set(_HANDLERS) == set(commands.KINDS)


# --- helpers ----------------------------------------------------------------------------

def _time_ms(body: dict) -> int:
    time_ms = body.get("time_ms")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or time_ms < 0:
        raise InvalidArgument("command time_ms must be a non-negative integer", field="time_ms")
    return time_ms


def _remember_request(txn: Txn, request_id: str, time_ms: int, result: dict) -> None:
    txn.put(keys.REQUESTS, keys.request_key(request_id),
            codec.pack({"time_ms": time_ms, "result": result}))
    time_key = keys.request_time_key(time_ms, request_id)
    txn.put(keys.REQUESTS_BY_TIME, time_key, b"")
    if c.next_counter(txn, META_REQUESTS_COUNT) == 0:
        txn.put(keys.META, META_REQUESTS_OLDEST, time_key[:8])
    else:
        oldest = txn.get(keys.META, META_REQUESTS_OLDEST)
        if oldest is not None and time_key[:8] < oldest:  # a clock that stepped back
            txn.put(keys.META, META_REQUESTS_OLDEST, time_key[:8])


META_REQUESTS_COUNT = b"requests_count"
# The time prefix (8 bytes) of the first key of REQUESTS_BY_TIME; absent when the table
# is empty, or in a store written before it was kept (then the next prune scans and
# sets it). It lets a command see that nothing is due without opening a scan.
META_REQUESTS_OLDEST = b"requests_oldest"


def _prune_requests(txn: Txn, time_ms: int) -> None:
    """Forget request ids past the dedup window, or the oldest beyond the entry cap.

    Bounded work per command; both limits are deterministic functions of stored state and
    the command's stamped time, so every replica prunes the same entries.
    """
    raw = txn.get(keys.META, META_REQUESTS_COUNT)
    count = keys.from_u64(raw) if raw else 0
    horizon = keys.u64(max(0, time_ms - limits.request_dedup_window_ms))
    if count < limits.request_dedup_entries_max:
        oldest = txn.get(keys.META, META_REQUESTS_OLDEST)
        if count == 0 or (oldest is not None and oldest >= horizon):
            return  # the scan below would stop at its first key
    doomed, first_kept = [], None
    for key, _ in txn.scan(keys.REQUESTS_BY_TIME):
        if (len(doomed) >= limits.request_dedup_prune_per_command_max
                or (key[:8] >= horizon
                    and count - len(doomed) < limits.request_dedup_entries_max)):
            first_kept = key
            break
        doomed.append(key)
    # Deleted after the scan: no cursor is open while the database changes.
    for key in doomed:
        txn.delete(keys.REQUESTS_BY_TIME, key)
        txn.delete(keys.REQUESTS, keys.request_key(keys.request_id_from_time_key(key)))
    if doomed:
        txn.put(keys.META, META_REQUESTS_COUNT, keys.u64(count - len(doomed)))
    if first_kept is not None:
        txn.put(keys.META, META_REQUESTS_OLDEST, first_kept[:8])
    else:
        txn.delete(keys.META, META_REQUESTS_OLDEST)
