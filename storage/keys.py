"""Key layout of a shard's LMDB environment.

Each named database holds one kind of record; composite keys join parts with NUL, which
no identifier may contain (validated at the API edge), so prefixes never collide.
Integers in keys are 8-byte big-endian so that byte order is numeric order.

    meta            b"applied_index" -> u64       last Raft index applied (same txn as effects)
                    b"shard_id"      -> u64
                    b"queue_seq"     -> u64       next queue sequence number
    workflows       workflow_id -> current run record (msgpack)
    runs            workflow_id NUL run_id -> closed earlier run record
    history         workflow_id NUL run_id NUL u64 event_id -> event
    queues          queue_name NUL u64 seq -> queue entry
    queue_counts    queue_name -> u64 depth
    timers          u64 fire_time_ms NUL workflow_id NUL timer_id -> timer
    state           workflow_id NUL run_id NUL key -> value (msgpack bytes; flow.sm_state)
    requests        request_id -> {time_ms, result}    (idempotent retries)
    requests_by_time u64 time_ms NUL request_id -> b""  (prunes the one above)
    tasks           workflow_id NUL run_id NUL task_key -> task record
    assignments     supervisor_id NUL digest(workflow_id, run_id, task_key) ->
                    {workflow_id, run_id, key, attempt} (key empty: a workflow task)
    supervisors     supervisor_id -> {build_id, workflow_types, task_types, registered_ms}
    declared_types  b"wf" NUL name -> {builds: {build_id: first_seen_ms}, upgradable} /
                    b"task" NUL name -> b"" (every type a supervisor declared)
    outbox          u64 seq -> entry for another shard (child starts, child results,
                    scheduled starts, schedule run reports)
    schedules       schedule_id -> schedule record (flow.sm_schedules)
    broadcasts      name -> {version, value, found, updated_ms} (flow.sm_state)
"""

from __future__ import annotations

import hashlib
import struct

SEP = b"\x00"

META = "meta"
WORKFLOWS = "workflows"
RUNS = "runs"
HISTORY = "history"
QUEUES = "queues"
QUEUE_COUNTS = "queue_counts"
TIMERS = "timers"
STATE = "state"
REQUESTS = "requests"
REQUESTS_BY_TIME = "requests_by_time"
TASKS = "tasks"
ASSIGNMENTS = "assignments"
SUPERVISORS = "supervisors"
DECLARED_TYPES = "declared_types"
OUTBOX = "outbox"
SCHEDULES = "schedules"
BROADCASTS = "broadcasts"
# Visibility index of current runs by time: started (b"s") and closed (b"c") keys, each
# u64 ms + workflow id -> b"". Kept by sm_common.save_workflow, read by queries.list_page.
WORKFLOWS_BY_TIME = "workflows_by_time"

ALL_DBS = (META, WORKFLOWS, RUNS, HISTORY, QUEUES, QUEUE_COUNTS, TIMERS, STATE, REQUESTS,
           REQUESTS_BY_TIME, TASKS, ASSIGNMENTS, SUPERVISORS, DECLARED_TYPES, OUTBOX, SCHEDULES,
           BROADCASTS, WORKFLOWS_BY_TIME)

META_APPLIED_INDEX = b"applied_index"
META_SHARD_ID = b"shard_id"
META_QUEUE_SEQ = b"queue_seq"

_U64 = struct.Struct(">Q")


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(data: bytes) -> int:
    return _U64.unpack(data)[0]


def workflow_key(workflow_id: str) -> bytes:
    return workflow_id.encode()


BY_START = b"s"
BY_CLOSE = b"c"


def by_time_key(field: bytes, time_ms: int, workflow_id: str) -> bytes:
    """A WORKFLOWS_BY_TIME key; its bytes sort by (time, workflow id)."""
    return field + u64(time_ms) + workflow_id.encode()


def by_time_parts(key: bytes) -> tuple[int, str]:
    """(time_ms, workflow_id) of a WORKFLOWS_BY_TIME key."""
    return from_u64(key[1:9]), key[9:].decode()


def run_key(workflow_id: str, run_id: str) -> bytes:
    return workflow_id.encode() + SEP + run_id.encode()


def history_key(workflow_id: str, run_id: str, event_id: int) -> bytes:
    return run_key(workflow_id, run_id) + SEP + u64(event_id)


def history_event_id(key: bytes) -> int:
    """The event id a history key ends with (history_key)."""
    return from_u64(key[-8:])


def history_prefix(workflow_id: str, run_id: str) -> bytes:
    return run_key(workflow_id, run_id) + SEP


def queue_key(queue_name: str, seq: int) -> bytes:
    return queue_name.encode() + SEP + u64(seq)


def queue_prefix(queue_name: str) -> bytes:
    return queue_name.encode() + SEP


def workflow_queue_name(workflow_type: str, build_id: str | None = None) -> str:
    """The durable queue of workflow tasks of one workflow type; with a build id, of the
    runs pinned to that build (only supervisors of that build take from it)."""
    return "wf/" + workflow_type + ("@" + build_id if build_id else "")


def task_queue_name(task_type: str) -> str:
    return "task/" + task_type


def timer_key(fire_time_ms: int, workflow_id: str, timer_id: str) -> bytes:
    return u64(fire_time_ms) + SEP + workflow_id.encode() + SEP + timer_id.encode()


def timer_fire_ms(key: bytes) -> int:
    return from_u64(key[:8])


def task_key(workflow_id: str, run_id: str, key: str) -> bytes:
    return run_key(workflow_id, run_id) + SEP + key.encode()


def tasks_prefix(workflow_id: str, run_id: str) -> bytes:
    return run_key(workflow_id, run_id) + SEP


def digest(*parts: str) -> str:
    """A short stable name for a tuple of ids, where the ids together would not fit an
    LMDB key (511 bytes). 16 bytes of blake2b: collisions are not a practical concern."""
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).hexdigest()


def assignment_key(supervisor_id: str, workflow_id: str, run_id: str, key: str) -> bytes:
    """The value holds the ids; the key only has to be unique per supervisor."""
    return supervisor_id.encode() + SEP + digest(workflow_id, run_id, key).encode()


def assignment_prefix(supervisor_id: str) -> bytes:
    return supervisor_id.encode() + SEP


def declared_type_key(kind: str, name: str) -> bytes:
    return kind.encode() + SEP + name.encode()


def state_key(workflow_id: str, run_id: str, key: str) -> bytes:
    return run_key(workflow_id, run_id) + SEP + key.encode()


def state_prefix(workflow_id: str, run_id: str) -> bytes:
    return run_key(workflow_id, run_id) + SEP


def broadcast_key(name: str) -> bytes:
    return name.encode()


def request_key(request_id: str) -> bytes:
    return request_id.encode()


def request_time_key(time_ms: int, request_id: str) -> bytes:
    return u64(time_ms) + SEP + request_id.encode()


def request_id_from_time_key(key: bytes) -> str:
    return key[9:].decode()
