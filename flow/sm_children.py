"""Child workflows in the shard state machine (pure): a parent and its child may live on
different shards, so they talk through an outbox.

    parent shard                                   child shard
    StartChildWorkflow ─▶ ChildWorkflowScheduled
                          outbox: start_child ────▶ start_workflow {parent}
                                                    ... the child runs ...
    child_closed ◀──────────────────────────────── close(): outbox: child_closed
    ChildWorkflowClosed (wakes the parent)

An outbox entry is written in the same transaction as the change that needs it and is
delivered at least once by the shard leader (flow.outbox), then removed by
`outbox_done`. Both ends are idempotent: a start carries a request id derived from the
parent's (workflow, run, key), and `child_closed` applies only to a child still pending.
A start the child's shard refuses (unknown type, id already running) comes back as the
child's failure, so the parent sees it where it awaits the child.
"""

from __future__ import annotations

from coda.errors import InvalidArgument
from coda.flow import limits, validate
from coda.flow import sm_common as c
from coda.storage import codec, keys

CHILD_PENDING = "CHILD_PENDING"
CHILD_CLOSED = "CHILD_CLOSED"
META_OUTBOX_SEQ = b"outbox_seq"


def put_outbox(ctx: c.Ctx, entry: dict) -> None:
    seq = c.next_counter(ctx.txn, META_OUTBOX_SEQ)
    ctx.txn.put(keys.OUTBOX, keys.u64(seq), codec.pack(entry))


def schedule(ctx: c.Ctx, record: dict, command: dict) -> None:
    key = validate.identifier(command.get("key"), "child key", limits.task_key_bytes_max)
    workflow_type = validate.type_name(command.get("workflow_type"))
    child_id = validate.workflow_id(command.get("workflow_id"))
    args = command.get("args")
    if not isinstance(args, bytes) or len(args) > limits.payload_bytes_max:
        raise InvalidArgument("child workflow args must be msgpack bytes within the payload "
                              "limit", field="args")
    options = command.get("options") or {}
    timeout_ms = options.get("execution_timeout_ms", 0) if isinstance(options, dict) else 0
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise InvalidArgument("execution_timeout_ms must be a non-negative integer",
                              field="execution_timeout_ms")
    wid, run_id = record["workflow_id"], record["run_id"]
    if c.load_task(ctx.txn, wid, run_id, key) is not None:
        return
    c.append_history(ctx, record, {"type": "ChildWorkflowScheduled", "key": key,
                                   "workflow_type": workflow_type, "workflow_id": child_id})
    c.save_task(ctx.txn, {"kind": "child", "workflow_id": wid, "run_id": run_id, "key": key,
                          "child_workflow_id": child_id, "status": CHILD_PENDING})
    put_outbox(ctx, {"kind": "start_child", "workflow_id": child_id,
                     "workflow_type": workflow_type, "input": args,
                     "request_id": "child-" + keys.digest(wid, run_id, key),
                     "execution_timeout_ms": timeout_ms,
                     "parent": {"workflow_id": wid, "run_id": run_id, "key": key}})


def notify_parent(ctx: c.Ctx, record: dict) -> None:
    """A run with a parent closed: tell the parent (through the outbox)."""
    parent = record.get("parent")
    if not parent:
        return
    put_outbox(ctx, {"kind": "child_closed", "workflow_id": parent["workflow_id"],
                     "parent": parent, "child_workflow_id": record["workflow_id"],
                     "status": record["status"], "result": record.get("result"),
                     "failure": record.get("failure")})


def child_closed(ctx: c.Ctx, body: dict) -> dict:
    """On the parent's shard: record the child's outcome and wake the parent."""
    parent = body.get("parent")
    if not isinstance(parent, dict):
        raise InvalidArgument("child_closed needs the parent", field="parent")
    wid = validate.workflow_id(parent.get("workflow_id"))
    run_id = validate.run_id(parent.get("run_id"))
    key = str(parent.get("key"))
    record = c.current_run(ctx.txn, wid, run_id)
    child = c.load_task(ctx.txn, wid, run_id, key)
    if record is None or child is None or child.get("status") != CHILD_PENDING:
        return {"applied": False}
    child["status"] = CHILD_CLOSED
    c.save_task(ctx.txn, child)
    status = str(body.get("status") or "FAILED")
    event = {"type": "ChildWorkflowClosed", "key": key,
             "workflow_id": child["child_workflow_id"], "status": status}
    if status == "COMPLETED":
        event["result"] = body.get("result")
    else:
        failure = body.get("failure") if isinstance(body.get("failure"), dict) else {}
        event["failure"] = {"type": str(failure.get("type") or "Error")[:255],
                            "message": str(failure.get("message") or "")[:8192]}
    c.append_history(ctx, record, event)
    record["wft_needed"] = True
    return {"applied": True, "record": record}


def outbox_done(ctx: c.Ctx, body: dict, on_refused: dict, on_done: dict | None = None) -> dict:
    """Delivered entries go (a kind in `on_done` is first handed to `on_done[kind](ctx,
    entry)`: a workflow's signal to another is recorded as sent); one the target refused
    goes to `on_refused[kind](ctx, entry, error)` (a child start's refusal becomes the
    child's failure; see `child_refused`). Other kinds' refusals (a close_run of a run that
    already closed) need nothing."""
    on_done = on_done or {}
    done = body.get("done", [])
    refused = body.get("refused", [])
    if (not isinstance(done, list) or not isinstance(refused, list)
            or len(done) + len(refused) > limits.outbox_batch_max):
        raise InvalidArgument(f"outbox_done lists at most {limits.outbox_batch_max} entries",
                              field="done")
    for seq in done:
        raw = ctx.txn.get(keys.OUTBOX, keys.u64(seq)) if type(seq) is int else None
        if raw is None:
            continue
        ctx.txn.delete(keys.OUTBOX, keys.u64(seq))
        entry = codec.unpack(raw)
        if entry.get("kind") in on_done:
            on_done[entry["kind"]](ctx, entry)
    for item in refused:
        seq, error = item.get("seq"), item.get("error") or {}
        raw = ctx.txn.get(keys.OUTBOX, keys.u64(seq)) if type(seq) is int else None
        if raw is None:
            continue
        ctx.txn.delete(keys.OUTBOX, keys.u64(seq))
        entry = codec.unpack(raw)
        handler = on_refused.get(entry["kind"])
        if handler is not None:
            handler(ctx, entry, error if isinstance(error, dict) else {})
    return {}


def child_refused(deliver_failure):
    """The refusal handler of start_child: `deliver_failure(ctx, body)` applies a
    child_closed on this, the parent's, shard."""
    def refused(ctx: c.Ctx, entry: dict, error: dict) -> None:
        deliver_failure(ctx, {"parent": entry["parent"], "status": "FAILED", "failure": {
            "type": str(error.get("code") or "StartChildFailed"),
            "message": f"child workflow {entry['workflow_id']!r} could not start: "
                       f"{error.get('message', '')}"}})
    return refused
