"""The shard state machine: a pure, deterministic function of (state, command) -> result.

Rule 1 (after h11): everything that changes a shard's state lives here. `apply` reads and
writes only through the `Txn` it is handed; it takes time, run ids and request ids from
the command (stamped by the leader), never from a clock or a random source. It imports no
lmdb, grpc, pysyncobj, asyncio, threading, time, random or os (tests/unit/test_purity.py
walks the imports to keep it so).

Contract with the shell (flow.replica):
- `apply(txn, data)` returns a result map: {"ok": {...}} or {"error": {code, message, details}}.
- A user error raises CodaError inside a handler; `apply` turns it into an error result.
  The shell runs each command in a child transaction and rolls it back when the result is
  an error, so a failed command leaves no partial writes.
- Any other exception is a bug; the shell contains it the same way (Internal error result),
  because an exception escaping apply would wedge the Raft node.
- Replaying an entry at or below the applied index is skipped by the shell, not here.
"""

from __future__ import annotations

from coda.errors import AlreadyExists, CodaError, InvalidArgument
from coda.flow import commands, limits, model, validate
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
        result = {"ok": handler(txn, cmd.body)}
        if request_id is not None:
            _remember_request(txn, request_id, time_ms, result)
        return result
    except CodaError as exc:
        return {"error": exc.to_wire()}


def is_error(result: dict) -> bool:
    return "error" in result


# --- commands ---------------------------------------------------------------------------

def _barrier(txn: Txn, body: dict) -> dict:
    return {}


def _start_workflow(txn: Txn, body: dict) -> dict:
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
    time_ms = _time_ms(body)

    current_raw = txn.get(keys.WORKFLOWS, keys.workflow_key(workflow_id))
    if current_raw is not None:
        current = codec.unpack(current_raw)
        if current["request_id"] == request_id:
            # A retry of the start that created this run: same answer, nothing new.
            return {"run_id": current["run_id"], "started": False}
        _make_room_for_new_run(txn, current, policy, time_ms)

    queue = keys.workflow_queue_name(workflow_type)
    seq = _enqueue(txn, queue, {"kind": "workflow_task", "workflow_id": workflow_id,
                                "run_id": run_id, "enqueued_ms": time_ms})
    record = {
        "workflow_id": workflow_id, "run_id": run_id, "workflow_type": workflow_type,
        "status": model.RUNNING, "start_time_ms": time_ms, "close_time_ms": None,
        "request_id": request_id, "attempt": 1, "history_length": 1,
        "queue": queue, "queue_seq": seq, "result": None, "failure": None,
    }
    txn.put(keys.WORKFLOWS, keys.workflow_key(workflow_id), codec.pack(record))
    _append_history(txn, workflow_id, run_id, 1, {
        "type": "WorkflowExecutionStarted", "time_ms": time_ms,
        "workflow_type": workflow_type, "input": payload, "request_id": request_id,
    })
    return {"run_id": run_id, "started": True}


_HANDLERS = {
    commands.START_WORKFLOW: _start_workflow,
    commands.BARRIER: _barrier,
}
assert set(_HANDLERS) == set(commands.KINDS)


# --- helpers ----------------------------------------------------------------------------

def _time_ms(body: dict) -> int:
    time_ms = body.get("time_ms")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or time_ms < 0:
        raise InvalidArgument("command time_ms must be a non-negative integer", field="time_ms")
    return time_ms


def _make_room_for_new_run(txn: Txn, current: dict, policy: str, time_ms: int) -> None:
    """Apply the reuse policy to the workflow's current run, or raise AlreadyExists."""
    workflow_id, status = current["workflow_id"], current["status"]
    if status == model.RUNNING:
        if policy != model.TERMINATE_IF_RUNNING:
            raise AlreadyExists(
                f"workflow {workflow_id!r} is already running (run {current['run_id']}); "
                f"reuse policy {policy} does not allow a second run",
                workflow_id=workflow_id, run_id=current["run_id"])
        _close_run(txn, current, model.TERMINATED, time_ms,
                   reason="terminated by a new start with TERMINATE_IF_RUNNING")
    elif policy == model.REJECT_DUPLICATE or (
            policy == model.ALLOW_DUPLICATE_FAILED_ONLY
            and status not in model.UNSUCCESSFUL_STATUSES):
        raise AlreadyExists(
            f"workflow {workflow_id!r} already ran (run {current['run_id']}, {status}); "
            f"reuse policy {policy} does not allow another run",
            workflow_id=workflow_id, run_id=current["run_id"])
    txn.put(keys.RUNS, keys.run_key(workflow_id, current["run_id"]), codec.pack(current))


def _close_run(txn: Txn, record: dict, status: str, time_ms: int, reason: str) -> None:
    if record.get("queue_seq") is not None:
        _dequeue(txn, record["queue"], record["queue_seq"])
        record["queue_seq"] = None
    record["status"] = status
    record["close_time_ms"] = time_ms
    record["failure"] = {"message": reason} if status != model.COMPLETED else None
    record["history_length"] += 1
    _append_history(txn, record["workflow_id"], record["run_id"], record["history_length"], {
        "type": "WorkflowExecution" + status.title().replace("_", ""), "time_ms": time_ms,
        "reason": reason,
    })


def _append_history(txn: Txn, workflow_id: str, run_id: str, event_id: int, event: dict) -> None:
    event = dict(event, event_id=event_id)
    txn.put(keys.HISTORY, keys.history_key(workflow_id, run_id, event_id), codec.pack(event))


def _next_counter(txn: Txn, key: bytes) -> int:
    raw = txn.get(keys.META, key)
    value = keys.from_u64(raw) if raw else 0
    txn.put(keys.META, key, keys.u64(value + 1))
    return value


def _add_depth(txn: Txn, queue: str, delta: int) -> None:
    raw = txn.get(keys.QUEUE_COUNTS, queue.encode())
    depth = (keys.from_u64(raw) if raw else 0) + delta
    assert depth >= 0, queue
    if depth:
        txn.put(keys.QUEUE_COUNTS, queue.encode(), keys.u64(depth))
    else:
        txn.delete(keys.QUEUE_COUNTS, queue.encode())


def _enqueue(txn: Txn, queue: str, entry: dict) -> int:
    seq = _next_counter(txn, keys.META_QUEUE_SEQ)
    txn.put(keys.QUEUES, keys.queue_key(queue, seq), codec.pack(entry))
    _add_depth(txn, queue, +1)
    return seq


def _dequeue(txn: Txn, queue: str, seq: int) -> None:
    if txn.delete(keys.QUEUES, keys.queue_key(queue, seq)):
        _add_depth(txn, queue, -1)


def _remember_request(txn: Txn, request_id: str, time_ms: int, result: dict) -> None:
    txn.put(keys.REQUESTS, keys.request_key(request_id),
            codec.pack({"time_ms": time_ms, "result": result}))
    txn.put(keys.REQUESTS_BY_TIME, keys.request_time_key(time_ms, request_id), b"")
    _next_counter(txn, META_REQUESTS_COUNT)


META_REQUESTS_COUNT = b"requests_count"


def _prune_requests(txn: Txn, time_ms: int) -> None:
    """Forget request ids past the dedup window, or the oldest beyond the entry cap.

    Bounded work per command; both limits are deterministic functions of stored state and
    the command's stamped time, so every replica prunes the same entries.
    """
    raw = txn.get(keys.META, META_REQUESTS_COUNT)
    count = keys.from_u64(raw) if raw else 0
    horizon = keys.u64(max(0, time_ms - limits.request_dedup_window_ms))
    doomed = []
    for key, _ in txn.scan(keys.REQUESTS_BY_TIME):
        if len(doomed) >= limits.request_dedup_prune_per_command_max:
            break
        if key[:8] >= horizon and count - len(doomed) < limits.request_dedup_entries_max:
            break
        doomed.append(key)
    # Deleted after the scan: no cursor is open while the database changes.
    for key in doomed:
        txn.delete(keys.REQUESTS_BY_TIME, key)
        txn.delete(keys.REQUESTS, keys.request_key(keys.request_id_from_time_key(key)))
    if doomed:
        txn.put(keys.META, META_REQUESTS_COUNT, keys.u64(count - len(doomed)))
