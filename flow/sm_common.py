"""Records and helpers shared by the state machine's handlers (pure, like them).

`Ctx` is what a handler gets: the transaction, the leader-stamped time, and the effects
the leader acts on after the commit (which workflows closed, which running tasks a
supervisor must stop). Effects are part of the command's result,
never of the replicated state, so followers compute and drop them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coda.flow import limits, model
from coda.storage import codec, keys
from coda.storage.txn import Txn

# Task states (the task record's "status").
QUEUED = "QUEUED"          # in its task queue, waiting for a supervisor
RUNNING = "RUNNING"        # assigned: an attempt runs on a supervisor
BACKOFF = "BACKOFF"        # an attempt failed; a timer re-queues it
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"    # its workflow closed first
OPEN_TASK_STATES = (QUEUED, RUNNING, BACKOFF)

WFT = ""  # the task key of a workflow task in assignments and completions

# Timer kinds.
TIMER_TASK_RETRY = "task_retry"
TIMER_START_TO_CLOSE = "start_to_close"
TIMER_SCHEDULE_TO_START = "schedule_to_start"
TIMER_HEARTBEAT = "heartbeat"
TIMER_WFT_RETRY = "wft_retry"
TIMER_WORKFLOW_RETRY = "workflow_retry"
TIMER_EXECUTION_TIMEOUT = "execution_timeout"
TIMER_USER = "user_timer"        # coda.context.sleep
TIMER_SCHEDULE = "schedule"      # a schedule's next nominal time (workflow_id: its id)


@dataclass
class Ctx:
    txn: Txn
    time_ms: int
    closed: list = field(default_factory=list)       # workflow ids whose run closed
    cancel: list = field(default_factory=list)       # [supervisor, wid, run, key, attempt]
    broadcast: list = field(default_factory=list)    # [name, version, found, value, updated_ms]
    history_warnings: list = field(default_factory=list)  # workflow ids nearing the limit
    # [supervisor, request id, [assigned item, ...]]: what a start or completion assigned
    # at once (sm_supervisors.assign_eagerly), for the leader to dispatch.
    assigned: list = field(default_factory=list)
    # (queue, seq) of every entry this command queued: not an effect, read by the eager
    # assignment at the end of the same command.
    enqueued: list = field(default_factory=list)

    def effects(self) -> dict:
        out = {}
        if self.assigned:
            out["assigned"] = self.assigned
        if self.closed:
            out["closed"] = self.closed
        if self.cancel:
            out["cancel"] = self.cancel
        if self.broadcast:
            out["broadcast"] = self.broadcast
        if self.history_warnings:
            out["history_warnings"] = self.history_warnings
        return out


# --- workflow records --------------------------------------------------------------------

def load_workflow(txn: Txn, workflow_id: str) -> dict | None:
    raw = txn.get(keys.WORKFLOWS, keys.workflow_key(workflow_id))
    return codec.unpack(raw) if raw is not None else None


def save_workflow(txn: Txn, record: dict) -> None:
    """Write a workflow's current-run row and keep its visibility index (by start and by
    close time) in step, in the same transaction."""
    key = keys.workflow_key(record["workflow_id"])
    old_raw = txn.get(keys.WORKFLOWS, key)
    old = codec.unpack(old_raw) if old_raw is not None else {}
    _reindex(txn, keys.BY_START, record["workflow_id"], old.get("start_time_ms"),
             record.get("start_time_ms"))
    _reindex(txn, keys.BY_CLOSE, record["workflow_id"], old.get("close_time_ms"),
             record.get("close_time_ms"))
    txn.put(keys.WORKFLOWS, key, codec.pack(record))


def _reindex(txn: Txn, field: bytes, workflow_id: str, old_ms, new_ms) -> None:
    if old_ms == new_ms:
        return
    if old_ms:
        txn.delete(keys.WORKFLOWS_BY_TIME, keys.by_time_key(field, old_ms, workflow_id))
    if new_ms:
        txn.put(keys.WORKFLOWS_BY_TIME, keys.by_time_key(field, new_ms, workflow_id), b"")


def current_run(txn: Txn, workflow_id: str, run_id: str) -> dict | None:
    """The workflow's record if `run_id` is its current, running run."""
    record = load_workflow(txn, workflow_id)
    if record is None or record["run_id"] != run_id or record["status"] != model.RUNNING:
        return None
    return record


def append_history(ctx: Ctx, record: dict, event: dict, time_ms: int | None = None) -> int:
    """Append `event`, stamped with the command's time (or `time_ms`: a chained workflow
    task's TaskCompleted keeps the time the supervisor's run of it saw, sm_supervisors)."""
    record["history_length"] += 1
    event_id = record["history_length"]
    data = codec.pack(dict(event, event_id=event_id,
                           time_ms=ctx.time_ms if time_ms is None else time_ms))
    record["history_bytes"] = record.get("history_bytes", 0) + len(data)
    ctx.txn.put(keys.HISTORY, keys.history_key(record["workflow_id"], record["run_id"], event_id),
                data)
    return event_id


def history_limits(body: dict) -> tuple[int, int]:
    """(events, bytes) a command carries as its run's history limits (the cluster's
    settings, stamped by the leader), clamped to the hard caps; defaults if absent."""
    stamped = body.get("history_limit")
    stamped = stamped if isinstance(stamped, dict) else {}
    events, size = stamped.get("events"), stamped.get("bytes")
    events = events if type(events) is int else limits.history_events_per_run_default
    size = size if type(size) is int else limits.history_bytes_per_run_default
    return (min(max(events, limits.history_events_per_run_min), limits.history_events_per_run_max),
            min(max(size, limits.history_bytes_per_run_min), limits.history_bytes_per_run_max))


def history_full(record: dict, history_limit: tuple[int, int], percent: int = 100) -> bool:
    events, size = history_limit
    return (record["history_length"] * 100 >= events * percent
            or record.get("history_bytes", 0) * 100 >= size * percent)


def past_retry_deadline(record: dict, retry_at_ms: int) -> bool:
    """A schedule's run retries (itself, or its tasks) no later than the schedule's next
    time, so a failing run never slides into the next run's slot (sm_schedules)."""
    deadline_ms = record.get("retry_deadline_ms") or 0
    return bool(deadline_ms) and retry_at_ms >= deadline_ms


# --- task records ------------------------------------------------------------------------

def load_task(txn: Txn, workflow_id: str, run_id: str, key: str) -> dict | None:
    raw = txn.get(keys.TASKS, keys.task_key(workflow_id, run_id, key))
    return codec.unpack(raw) if raw is not None else None


def save_task(txn: Txn, task: dict) -> None:
    txn.put(keys.TASKS, keys.task_key(task["workflow_id"], task["run_id"], task["key"]),
            codec.pack(task))


def open_tasks(txn: Txn, workflow_id: str, run_id: str) -> list[dict]:
    found = []
    for _, raw in txn.scan(keys.TASKS, prefix=keys.tasks_prefix(workflow_id, run_id)):
        task = codec.unpack(raw)
        if task["status"] in OPEN_TASK_STATES:
            found.append(task)
    return found


# --- queues ------------------------------------------------------------------------------

def next_counter(txn: Txn, key: bytes) -> int:
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


def enqueue(ctx: Ctx, queue: str, entry: dict) -> int:
    seq = next_counter(ctx.txn, keys.META_QUEUE_SEQ)
    ctx.txn.put(keys.QUEUES, keys.queue_key(queue, seq), codec.pack(entry))
    _add_depth(ctx.txn, queue, +1)
    ctx.enqueued.append((queue, seq))
    return seq


def dequeue(txn: Txn, queue: str, seq: int) -> dict | None:
    """Remove a queue entry; returns it, or None if it was not there."""
    key = keys.queue_key(queue, seq)
    raw = txn.get(keys.QUEUES, key)
    if raw is None:
        return None
    txn.delete(keys.QUEUES, key)
    _add_depth(txn, queue, -1)
    return codec.unpack(raw)


# --- timers ------------------------------------------------------------------------------

def set_timer(ctx: Ctx, fire_ms: int, workflow_id: str, body: dict) -> bytes:
    """A durable timer; `body` says what firing it does. Returns its key (keep it to
    cancel the timer). The id digests what the timer is for, so keys stay short."""
    timer_id = keys.digest(body["kind"], body.get("run_id", ""), body.get("key", ""),
                           str(body.get("attempt", 0)))
    key = keys.timer_key(fire_ms, workflow_id, timer_id)
    ctx.txn.put(keys.TIMERS, key, codec.pack(dict(body, workflow_id=workflow_id)))
    return key


def clear_timers(txn: Txn, timer_keys) -> None:
    for key in timer_keys or ():
        if key is not None:
            txn.delete(keys.TIMERS, key)


# --- assignments -------------------------------------------------------------------------

def add_assignment(txn: Txn, supervisor_id: str, workflow_id: str, run_id: str, key: str,
                   attempt: int) -> None:
    txn.put(keys.ASSIGNMENTS, keys.assignment_key(supervisor_id, workflow_id, run_id, key),
            codec.pack({"workflow_id": workflow_id, "run_id": run_id, "key": key,
                        "attempt": attempt}))


def remove_assignment(txn: Txn, supervisor_id: str | None, workflow_id: str, run_id: str,
                      key: str) -> None:
    if supervisor_id is not None:
        txn.delete(keys.ASSIGNMENTS, keys.assignment_key(supervisor_id, workflow_id, run_id, key))


def assignments_of(txn: Txn, supervisor_id: str) -> list[dict]:
    return [codec.unpack(raw) for _, raw in
            txn.scan(keys.ASSIGNMENTS, prefix=keys.assignment_prefix(supervisor_id))]


def declared_workflow(txn: Txn, name: str) -> dict:
    """{builds: {build_id: first_seen_ms}, upgradable: bool} of a workflow type (empty
    if no supervisor declared it, or only before builds were recorded)."""
    raw = txn.get(keys.DECLARED_TYPES, keys.declared_type_key("wf", name))
    found = codec.unpack(raw) if raw else None
    return found if isinstance(found, dict) else {"builds": {}, "upgradable": False}


def default_build(declared: dict) -> str | None:
    """Where new runs of a type go: the build first seen last (a supervisor of an old
    build reconnecting does not make it new again)."""
    builds = declared.get("builds") or {}
    if not builds:
        return None
    return max(builds.items(), key=lambda item: (item[1], item[0]))[0]


def is_declared(txn: Txn, kind: str, name: str) -> bool:
    return txn.get(keys.DECLARED_TYPES, keys.declared_type_key(kind, name)) is not None
