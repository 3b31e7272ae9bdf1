"""Replicated commands: versioned msgpack bytes through one replicated entry point.

Wire form: msgpack [version, kind, body]. The leader builds a command with everything
`apply` needs stamped in (time, run ids, request id), so applying it is deterministic.
One entry point with versioned bytes keeps pysyncobj's method ids stable forever (they
come from sorting method names) and lets old log entries decode after an upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from coda.errors import InvalidArgument
from coda.flow import limits
from coda.storage import codec

VERSION = 1

START_WORKFLOW = "start_workflow"
BARRIER = "barrier"
CANCEL_WORKFLOW = "cancel_workflow"
TERMINATE_WORKFLOW = "terminate_workflow"
REGISTER_SUPERVISOR = "register_supervisor"
EXPIRE_SUPERVISOR = "expire_supervisor"
ASSIGN = "assign"
COMPLETE = "complete"
TASK_HEARTBEAT = "task_heartbeat"
FIRE_TIMERS = "fire_timers"
CHILD_CLOSED = "child_closed"
OUTBOX_DONE = "outbox_done"
CREATE_SCHEDULE = "create_schedule"
UPDATE_SCHEDULE = "update_schedule"
DELETE_SCHEDULE = "delete_schedule"
PATCH_SCHEDULE = "patch_schedule"          # pause, unpause, trigger, backfill
SCHEDULE_RUN_CLOSED = "schedule_run_closed"
SIGNAL_WORKFLOW = "signal_workflow"
SET_BROADCAST = "set_broadcast"        # a value, or None: delete
SCHEDULE_KINDS = (CREATE_SCHEDULE, UPDATE_SCHEDULE, DELETE_SCHEDULE, PATCH_SCHEDULE)
KINDS = (START_WORKFLOW, BARRIER, CANCEL_WORKFLOW, TERMINATE_WORKFLOW, REGISTER_SUPERVISOR,
         EXPIRE_SUPERVISOR, ASSIGN, COMPLETE, TASK_HEARTBEAT, FIRE_TIMERS, CHILD_CLOSED,
         OUTBOX_DONE, *SCHEDULE_KINDS, SCHEDULE_RUN_CLOSED, SIGNAL_WORKFLOW, SET_BROADCAST)


@dataclass(frozen=True)
class Command:
    kind: str
    body: dict


class CommandError(InvalidArgument):
    """A command's bytes can't be decoded; it is answered with an error, never raised in apply."""


def encode(kind: str, body: dict) -> bytes:
    assert kind in KINDS, kind
    data = codec.pack([VERSION, kind, body])
    if len(data) > limits.command_bytes_max:
        raise InvalidArgument(
            f"command {kind} is {len(data)} bytes, over the limit of {limits.command_bytes_max}",
            size_bytes=len(data), limit_bytes=limits.command_bytes_max)
    return data


# A Raft entry may carry several commands (flow.replica batches the proposals of one event
# loop turn): msgpack [VERSION, "batch", [command bytes, ...]]. The applier splits it and
# applies each command in its own child transaction, exactly as if each were its own
# entry; "batch" is not a command kind, so the state machine never sees the frame.
BATCH = "batch"
_BATCH_PREFIX = codec.pack([VERSION, BATCH, []])[:-1]  # array header, version, "batch"


def encode_batch(datas: list[bytes]) -> bytes:
    assert len(datas) >= 2 and all(isinstance(d, bytes) for d in datas)
    return codec.pack([VERSION, BATCH, datas])


def split_batch(data) -> list | None:
    """The commands of a batch entry; None if `data` is a single command. A malformed
    batch raises CommandError (answered as an error, like any undecodable command)."""
    if not isinstance(data, (bytes, bytearray)) or not data.startswith(_BATCH_PREFIX):
        return None
    try:
        decoded = codec.unpack(bytes(data))
    except Exception as exc:
        raise CommandError(f"batch entry is not valid msgpack: {exc}") from None
    datas = decoded[2] if isinstance(decoded, list) and len(decoded) == 3 else None
    if not (isinstance(datas, list) and 1 <= len(datas) <= limits.proposal_batch_commands_max):
        raise CommandError(f"a batch entry carries 1..{limits.proposal_batch_commands_max} "
                           "commands")
    return datas


# A leader may replicate what an entry wrote instead of the entry (flow.speculation):
# msgpack [VERSION, "writes", term, [[db, key, value or nil], ...]]. The term is the one
# the leader appended it in (its answer to the proposer is matched by index and term).
WRITES = "writes"
_WRITES_PREFIX = codec.pack([VERSION, WRITES, 0, []])[:-2]  # header, version, "writes"


def encode_writes(term: int, writes: dict) -> bytes:
    """The entry form of a write set {(db, key): value or None}."""
    return encode_write_items(term, write_items(writes))


def write_items(writes: dict) -> list:
    """[[db, key, value or None], ...] of a write set {(db, key): value or None}: what
    split_writes gives back from its entry."""
    return [[db, key, value] for (db, key), value in writes.items()]


def encode_write_items(term: int, items: list) -> bytes:
    return codec.pack([VERSION, WRITES, term, items])


def split_writes(data) -> tuple[int, list] | None:
    """(term, [[db, key, value or None], ...]) of a write-set entry; None if `data` is
    not one. A malformed frame raises CommandError."""
    if not isinstance(data, (bytes, bytearray)) or not data.startswith(_WRITES_PREFIX):
        return None
    try:
        decoded = codec.unpack(bytes(data))
    except Exception as exc:
        raise CommandError(f"write-set entry is not valid msgpack: {exc}") from None
    if not (isinstance(decoded, list) and len(decoded) == 4 and type(decoded[2]) is int
            and isinstance(decoded[3], list)):
        raise CommandError("a write-set entry is [version, 'writes', term, [[db, key, value]]]")
    return decoded[2], decoded[3]


def decode(data) -> Command:
    if not isinstance(data, (bytes, bytearray)):
        raise CommandError(f"command must be bytes, got {type(data).__name__}")
    if len(data) > limits.command_bytes_max:
        raise CommandError(f"command is {len(data)} bytes, over {limits.command_bytes_max}")
    try:
        decoded = codec.unpack(bytes(data))
    except Exception as exc:
        raise CommandError(f"command is not valid msgpack: {exc}") from None
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise CommandError("command must be [version, kind, body]")
    version, kind, body = decoded
    # An int, not merely equal to one: msgpack's true and 1.0 compare equal to 1 in Python.
    if type(version) is not int or version != VERSION:
        raise CommandError(f"command version {version!r} is not supported (this build: {VERSION})")
    if kind not in KINDS:
        raise CommandError(f"unknown command kind {kind!r}")
    if not isinstance(body, dict):
        raise CommandError(f"command {kind} body must be a map")
    return Command(kind, body)


def start_workflow(*, request_id: str, time_ms: int, workflow_id: str, workflow_type: str,
                   input_payload: bytes, run_id: str, reuse_policy: str,
                   execution_timeout_ms: int = 0, allow_undeclared_type: bool = True,
                   parent: dict | None = None, schedule: dict | None = None,
                   retry_deadline_ms: int = 0, eager: dict | None = None) -> bytes:
    """`schedule` {schedule_id, nominal_ms}: the run is a schedule's, reported to it when it
    closes; its retries stop at `retry_deadline_ms` (the schedule's next time; 0: never).
    `eager` {supervisor_id, items}: its first workflow task may go to that supervisor."""
    body = {
        "request_id": request_id, "time_ms": time_ms, "workflow_id": workflow_id,
        "workflow_type": workflow_type, "input": input_payload, "run_id": run_id,
        "reuse_policy": reuse_policy, "execution_timeout_ms": execution_timeout_ms,
        "allow_undeclared_type": allow_undeclared_type,
    }
    if parent is not None:
        body["parent"] = parent
    if schedule is not None:
        body["schedule"] = schedule
        body["retry_deadline_ms"] = retry_deadline_ms
    if eager is not None:
        body["eager"] = eager
    return encode(START_WORKFLOW, body)


def signal_workflow(*, request_id: str, time_ms: int, workflow_id: str, run_id: str | None,
                    name: str, payload: bytes, sender: dict | None = None,
                    history_limit: dict | None = None) -> bytes:
    """`sender` {workflow_id, run_id}: the workflow that sent it (through the outbox);
    `history_limit` {events, bytes}: the cluster's, stamped by the leader."""
    body = {"request_id": request_id, "time_ms": time_ms, "workflow_id": workflow_id,
            "run_id": run_id, "name": name, "payload": payload}
    if history_limit is not None:
        body["history_limit"] = history_limit
    if sender is not None:
        body["sender"] = sender
    return encode(SIGNAL_WORKFLOW, body)


def set_broadcast(*, request_id: str, time_ms: int, name: str, value: bytes | None,
                  if_version: int | None = None) -> bytes:
    """`if_version`: only if the current version is this one (0: the name has none)."""
    return encode(SET_BROADCAST, {"request_id": request_id, "time_ms": time_ms, "name": name,
                                  "value": value, "if_version": if_version})


def schedule_command(kind: str, *, request_id: str, time_ms: int, body: dict) -> bytes:
    """create/update/delete/patch_schedule: `body` as flow.sm_schedules reads it."""
    assert kind in SCHEDULE_KINDS, kind
    return encode(kind, dict(body, request_id=request_id, time_ms=time_ms))


def schedule_run_closed(*, time_ms: int, entry: dict) -> bytes:
    return encode(SCHEDULE_RUN_CLOSED, {"time_ms": time_ms, "schedule_id": entry["schedule_id"],
                                        "workflow_id": entry["workflow_id"],
                                        "status": entry["status"]})


def child_closed(*, time_ms: int, entry: dict) -> bytes:
    """Deliver an outbox entry of kind child_closed to the parent's shard."""
    return encode(CHILD_CLOSED, {"time_ms": time_ms, "parent": entry["parent"],
                                 "status": entry["status"], "result": entry.get("result"),
                                 "failure": entry.get("failure")})


def outbox_done(*, time_ms: int, done: list, refused: list) -> bytes:
    return encode(OUTBOX_DONE, {"time_ms": time_ms, "done": done, "refused": refused})


def close_request(kind: str, *, request_id: str, time_ms: int, workflow_id: str,
                  run_id: str | None, reason: str) -> bytes:
    """cancel_workflow or terminate_workflow."""
    assert kind in (CANCEL_WORKFLOW, TERMINATE_WORKFLOW)
    return encode(kind, {"request_id": request_id, "time_ms": time_ms,
                         "workflow_id": workflow_id, "run_id": run_id, "reason": reason})


def register_supervisor(*, time_ms: int, supervisor_id: str, build_id: str,
                        workflow_types: list, task_types: list, running: list,
                        upgradable_workflow_types: list = ()) -> bytes:
    return encode(REGISTER_SUPERVISOR, {
        "time_ms": time_ms, "supervisor_id": supervisor_id, "build_id": build_id,
        "workflow_types": workflow_types, "task_types": task_types, "running": running,
        "upgradable_workflow_types": list(upgradable_workflow_types)})


def expire_supervisor(*, time_ms: int, supervisor_id: str) -> bytes:
    return encode(EXPIRE_SUPERVISOR, {"time_ms": time_ms, "supervisor_id": supervisor_id})


def assign(*, time_ms: int, supervisor_id: str, items: list,
           dispatch_id: str | None = None) -> bytes:
    """dispatch_id: names the assignment in its effects (not a dedup request id)."""
    body = {"time_ms": time_ms, "supervisor_id": supervisor_id, "items": items}
    if dispatch_id is not None:
        body["dispatch_id"] = dispatch_id
    return encode(ASSIGN, body)


def complete(*, time_ms: int, request_id: str, workflow_id: str, run_id: str, key: str,
             attempt: int, outcome: dict, eager: dict | None = None) -> bytes:
    """outcome: {"result": bytes} | {"failure": {...}} | {"commands": [...]}; eager:
    {"supervisor_id", "items"}, what it queued that the supervisor may get at once."""
    body = dict(outcome, time_ms=time_ms, request_id=request_id, workflow_id=workflow_id,
                run_id=run_id, key=key, attempt=attempt)
    if eager is not None:
        body["eager"] = eager
    return encode(COMPLETE, body)


def task_heartbeat(*, time_ms: int, workflow_id: str, run_id: str, key: str, attempt: int,
                   details: bytes | None) -> bytes:
    return encode(TASK_HEARTBEAT, {"time_ms": time_ms, "workflow_id": workflow_id,
                                   "run_id": run_id, "key": key, "attempt": attempt,
                                   "details": details})


def fire_timers(*, time_ms: int, timer_keys: list) -> bytes:
    return encode(FIRE_TIMERS, {"time_ms": time_ms, "keys": timer_keys})


def barrier(*, time_ms: int) -> bytes:
    return encode(BARRIER, {"time_ms": time_ms})
