"""Workflow state, signals and broadcast variables in the shard state machine (pure).

State. A workflow task's `SetState {key, value}` command writes the run's state row and
appends `StateSet {key, value}` to its history, in the transaction that commits the rest
of the workflow task, so what a client reads is what the workflow had decided at a
committed step. Reads are queries (flow.queries.state_value) after a log barrier:
linearizable. A workflow's read of *another* workflow's state, or of a broadcast
variable, is done by its supervisor and recorded by `RecordRead` as `StateRead` /
`BroadcastRead`, so replay returns the value the run saw.

Signals. `signal_workflow` appends `SignalReceived {name, payload, signal_id}` to the running
run's history and wakes it. The request id is deduplicated by `apply`, so a client that
retries after an unknown outcome adds nothing: each signal lands in history exactly once,
in commit order, and stays there (buffered) until the workflow waits for it. A workflow
signals another through the outbox (`SignalExternal`): the entry carries a request id made
from (sender, run, key), is delivered at least once and applied once; the sender's history
then gets `SignalExternalSent` or `SignalExternalFailed`.

Broadcast variables. `set_broadcast` stores a value under a name on the name's shard and
bumps its version (a delete leaves a tombstone, so versions never go back). The result
carries the `broadcast` effect: the leader pushes the new version to its watchers
(flow.dispatcher → WatchBroadcasts streams → supervisors' caches).
"""

from __future__ import annotations

from coda.errors import Aborted, InvalidArgument, LimitExceeded, NotFound, ResourceExhausted
from coda.flow import limits, model, validate
from coda.flow import sm_common as c
from coda.flow import sm_children
from coda.storage import codec, keys

META_BROADCASTS_COUNT = b"broadcasts_count"
SIGNAL_PENDING = "SIGNAL_PENDING"
SIGNAL_DONE = "SIGNAL_DONE"
READ_EVENTS = {"state": "StateRead", "broadcast": "BroadcastRead"}


def state_key(value) -> str:
    return validate.identifier(value, "state key", limits.state_key_bytes_max)


def signal_name(value) -> str:
    return validate.identifier(value, "signal name", limits.signal_name_bytes_max)


def broadcast_name(value) -> str:
    return validate.identifier(value, "broadcast name", limits.broadcast_name_bytes_max)


def _payload(value, what: str, *, optional: bool = False) -> bytes | None:
    if value is None and optional:
        return None
    if not isinstance(value, bytes) or len(value) > limits.payload_bytes_max:
        raise InvalidArgument(f"{what} must be msgpack bytes within {limits.payload_bytes_max} "
                              "bytes", field=what)
    return value


# --- workflow state ----------------------------------------------------------------------

def set_state(ctx: c.Ctx, record: dict, command: dict) -> None:
    key = state_key(command.get("key"))
    value = _payload(command.get("value"), "state value")
    row = keys.state_key(record["workflow_id"], record["run_id"], key)
    if ctx.txn.get(keys.STATE, row) is None:
        if record.get("state_keys", 0) >= limits.state_keys_per_run_max:
            raise LimitExceeded(
                f"workflow {record['workflow_id']!r} already has {limits.state_keys_per_run_max} "
                "state keys, the limit", workflow_id=record["workflow_id"],
                limit=limits.state_keys_per_run_max)
        record["state_keys"] = record.get("state_keys", 0) + 1
    ctx.txn.put(keys.STATE, row, value)
    c.append_history(ctx, record, {"type": "StateSet", "key": key, "value": value})


def record_read(ctx: c.Ctx, record: dict, command: dict) -> None:
    """What the run's supervisor read for it (another workflow's state, a broadcast)."""
    kind = command.get("kind")
    if kind not in READ_EVENTS:
        raise InvalidArgument(f"a read is of kind {' or '.join(READ_EVENTS)}, got {kind!r}",
                              field="kind")
    seq = command.get("seq")
    if type(seq) is not int or seq < 0:
        raise InvalidArgument("a read's seq must be a non-negative integer", field="seq")
    event = {"type": READ_EVENTS[kind], "seq": seq, "found": bool(command.get("found"))}
    if kind == "state":
        event["workflow_id"] = validate.workflow_id(command.get("workflow_id"))
        event["key"] = state_key(command.get("key"))
    else:
        event["name"] = broadcast_name(command.get("name"))
        version = command.get("version")
        if type(version) is not int or version < 0:
            raise InvalidArgument("a broadcast read's version must be a non-negative integer",
                                  field="version")
        event["version"] = version
    value = _payload(command.get("value"), "read value", optional=True)
    if value is not None:
        event["value"] = value
    if command.get("message"):
        event["message"] = str(command["message"])[:1000]  # why not found, for replays
    c.append_history(ctx, record, event)


# --- signals -----------------------------------------------------------------------------

def signal(ctx: c.Ctx, body: dict) -> dict:
    """Append a signal to the target's running run; returns the run record (the caller
    wakes and saves it)."""
    workflow_id = validate.workflow_id(body.get("workflow_id"))
    name = signal_name(body.get("name"))
    payload = _payload(body.get("payload"), "signal payload")
    record = c.load_workflow(ctx.txn, workflow_id)
    if record is None:
        raise NotFound(f"workflow {workflow_id!r} not found: no signal delivered",
                       workflow_id=workflow_id)
    run_id = body.get("run_id") or record["run_id"]
    if run_id != record["run_id"] or record["status"] != model.RUNNING:
        raise NotFound(f"workflow {workflow_id!r} run {run_id} is not running (its current run "
                       f"{record['run_id']} is {record['status']}): signals go only to running "
                       "runs", workflow_id=workflow_id, run_id=run_id, status=record["status"])
    if c.history_full(record, c.history_limits(body)):
        raise LimitExceeded(f"workflow {workflow_id!r} run {record['run_id']} has a full "
                                f"history ({record['history_length']} events): no more "
                                "signals; it should continue as new",
                                workflow_id=workflow_id)
    count = record.get("signals", 0)
    if count >= limits.signals_per_run_max:
        raise LimitExceeded(f"workflow {workflow_id!r} has received "
                                f"{limits.signals_per_run_max} signals, the limit per run",
                                workflow_id=workflow_id, limit=limits.signals_per_run_max)
    record["signals"] = count + 1
    event = {"type": "SignalReceived", "name": name, "payload": payload, "signal_id": count + 1}
    sender = body.get("sender")
    if isinstance(sender, dict):
        event["sender"] = {"workflow_id": str(sender.get("workflow_id"))[:limits.workflow_id_bytes_max],
                           "run_id": str(sender.get("run_id"))[:limits.run_id_bytes_max]}
    c.append_history(ctx, record, event)
    record["wft_needed"] = True
    return record


def signal_external(ctx: c.Ctx, record: dict, command: dict) -> None:
    """A workflow signals another: recorded here, delivered through the outbox."""
    key = validate.identifier(command.get("key"), "signal key", limits.task_key_bytes_max)
    target = validate.workflow_id(command.get("workflow_id"))
    name = signal_name(command.get("name"))
    payload = _payload(command.get("payload"), "signal payload")
    wid, run_id = record["workflow_id"], record["run_id"]
    if c.load_task(ctx.txn, wid, run_id, key) is not None:
        return
    c.append_history(ctx, record, {"type": "SignalExternalScheduled", "key": key,
                                   "workflow_id": target, "name": name})
    c.save_task(ctx.txn, {"kind": "signal", "workflow_id": wid, "run_id": run_id, "key": key,
                          "target": target, "status": SIGNAL_PENDING})
    sm_children.put_outbox(ctx, {"kind": "signal", "workflow_id": target, "name": name,
                                 "payload": payload,
                                 "request_id": "signal-" + keys.digest(wid, run_id, key),
                                 "sender": {"workflow_id": wid, "run_id": run_id, "key": key}})


def external_signal_outcome(ctx: c.Ctx, entry: dict, error: dict | None) -> dict | None:
    """On the sender's shard, once its signal was delivered (error None) or refused:
    the sender's history says so. Returns the sender's run record to wake, if running."""
    sender = entry.get("sender") or {}
    wid, run_id, key = sender.get("workflow_id"), sender.get("run_id"), sender.get("key")
    record = c.current_run(ctx.txn, wid, run_id)
    task = c.load_task(ctx.txn, wid, run_id, key) if record is not None else None
    if task is None or task.get("status") != SIGNAL_PENDING:
        return None
    task["status"] = SIGNAL_DONE
    c.save_task(ctx.txn, task)
    if error is None:
        c.append_history(ctx, record, {"type": "SignalExternalSent", "key": key})
    else:
        c.append_history(ctx, record, {"type": "SignalExternalFailed", "key": key, "error": {
            "type": str(error.get("code") or "SignalFailed")[:255],
            "message": str(error.get("message") or "")[:8192]}})
    record["wft_needed"] = True
    return record


# --- broadcast variables -----------------------------------------------------------------

def load_broadcast(txn, name: str) -> dict | None:
    raw = txn.get(keys.BROADCASTS, keys.broadcast_key(name))
    return codec.unpack(raw) if raw is not None else None


def set_broadcast(ctx: c.Ctx, body: dict) -> dict:
    name = broadcast_name(body.get("name"))
    value = _payload(body.get("value"), "broadcast value", optional=True)
    if_version = body.get("if_version")
    if if_version is not None and (type(if_version) is not int or if_version < 0):
        raise InvalidArgument("if_version must be a non-negative integer", field="if_version")
    current = load_broadcast(ctx.txn, name)
    version = current["version"] if current else 0
    if if_version is not None and if_version != version:
        raise Aborted(f"broadcast {name!r} is at version {version}, not {if_version}: not "
                      "changed", name=name, version=version, if_version=if_version)
    if current is None:
        if value is None:
            return {"version": 0}  # deleting what never existed changes nothing
        raw = ctx.txn.get(keys.META, META_BROADCASTS_COUNT)
        count = keys.from_u64(raw) if raw else 0
        if count >= limits.broadcasts_per_shard_max:
            raise ResourceExhausted(f"this shard holds {count} broadcast variables, the limit",
                                    limit=limits.broadcasts_per_shard_max)
        ctx.txn.put(keys.META, META_BROADCASTS_COUNT, keys.u64(count + 1))
    version += 1
    entry = {"version": version, "found": value is not None, "value": value,
             "updated_ms": ctx.time_ms}
    ctx.txn.put(keys.BROADCASTS, keys.broadcast_key(name), codec.pack(entry))
    ctx.broadcast.append([name, version, value is not None, value, ctx.time_ms])
    return {"version": version}
