"""Reads of a shard's state, pure like the state machine (they take a `Txn`).

They run after a log barrier (flow.replica), so what they see includes every write
acknowledged before the read began: linearizable.
"""

from __future__ import annotations

from coda.errors import NotFound
from coda.flow import limits
from coda.flow import sm_common as c
from coda.storage import codec, keys
from coda.storage.txn import Txn


def describe(txn: Txn, workflow_id: str, run_id: str | None = None) -> dict:
    raw = txn.get(keys.WORKFLOWS, keys.workflow_key(workflow_id))
    if raw is not None:
        record = codec.unpack(raw)
        if run_id in (None, record["run_id"]):
            return record
    if run_id is not None:
        raw = txn.get(keys.RUNS, keys.run_key(workflow_id, run_id))
        if raw is not None:
            return codec.unpack(raw)
        raise NotFound(f"workflow {workflow_id!r} has no run {run_id!r}",
                       workflow_id=workflow_id, run_id=run_id)
    raise NotFound(f"workflow {workflow_id!r} not found", workflow_id=workflow_id)


def list_page(txn: Txn, *, after: str, statuses: tuple[str, ...], types: tuple[str, ...],
              page_size: int, scan_max: int = limits.list_scan_records_max,
              builds: tuple[str, ...] = ()) -> dict:
    """Current runs with workflow id > `after` matching the filters, in id order.

    Returns {"items": [...], "resume_after": key or None, "exhausted": bool}: every match
    with id <= resume_after was returned, so a merge across shards can page exactly.
    """
    items: list[dict] = []
    scanned = 0
    last_key: str | None = None
    start = after.encode() + b"\x00" if after else b""
    for key, raw in txn.scan(keys.WORKFLOWS, start=start):
        if scanned >= scan_max or len(items) >= page_size:
            return {"items": items, "resume_after": last_key, "exhausted": False}
        scanned += 1
        last_key = key.decode()
        record = codec.unpack(raw)
        if statuses and record["status"] not in statuses:
            continue
        if types and record["workflow_type"] not in types:
            continue
        if builds and record.get("build_id") not in builds:
            continue
        items.append(record)
    return {"items": items, "resume_after": last_key, "exhausted": True}


def pending(txn: Txn, record: dict, max_each: int) -> dict:
    """A run's open tasks and user timers, at most max_each of each (in key order)."""
    tasks = []
    truncated = False
    for _, raw in txn.scan(keys.TASKS, prefix=keys.tasks_prefix(record["workflow_id"],
                                                                record["run_id"])):
        task = codec.unpack(raw)
        if task["status"] not in c.OPEN_TASK_STATES:
            continue
        if len(tasks) >= max_each:
            truncated = True
            break
        retry_key = (task.get("timers") or {}).get(c.TIMER_TASK_RETRY)
        tasks.append({"key": task["key"], "task_type": task["task"], "state": task["status"],
                      "attempt": task["attempt"], "scheduled_time_ms": task["scheduled_ms"],
                      "supervisor_id": task.get("supervisor") or "",
                      "last_error": task.get("last_error") if task["status"] == c.BACKOFF
                      else None,
                      "retry_time_ms": keys.timer_fire_ms(retry_key) if retry_key else 0})
    timers = []
    for key in (record.get("timers") or ()):
        raw = txn.get(keys.TIMERS, key)
        if raw is None:
            continue
        if len(timers) >= max_each:
            truncated = True
            break
        timers.append({"key": codec.unpack(raw).get("key", ""),
                       "fire_time_ms": keys.timer_fire_ms(key)})
    return {"tasks": tasks, "timers": timers, "truncated": truncated}


def supervisors(txn: Txn) -> list[dict]:
    """Supervisors with a live lease on this shard, with what they registered."""
    return [dict(codec.unpack(raw), supervisor_id=key.decode())
            for key, raw in txn.scan(keys.SUPERVISORS)]


def queue_depths(txn: Txn) -> dict[str, int]:
    return {key.decode(): keys.from_u64(raw) for key, raw in txn.scan(keys.QUEUE_COUNTS)}


def history(txn: Txn, workflow_id: str, run_id: str) -> list[dict]:
    prefix = keys.history_prefix(workflow_id, run_id)
    return [codec.unpack(raw) for _, raw in txn.scan(keys.HISTORY, prefix=prefix)]


def history_page(txn: Txn, workflow_id: str, run_id: str | None, *, after_event_id: int,
                 page_size: int) -> dict:
    """{run_id, events (event_id > after_event_id, at most page_size and, past the first
    event, limits.history_page_bytes_max of them), more}."""
    record = describe(txn, workflow_id, run_id)
    prefix = keys.history_prefix(workflow_id, record["run_id"])
    start = keys.history_key(workflow_id, record["run_id"], after_event_id + 1)
    events, page_bytes = [], 0
    for _, raw in txn.scan(keys.HISTORY, prefix=prefix, start=start):
        page_bytes += len(raw)
        if len(events) >= page_size or (events and page_bytes > limits.history_page_bytes_max):
            return {"run_id": record["run_id"], "events": events, "more": True}
        events.append(codec.unpack(raw))
    return {"run_id": record["run_id"], "events": events, "more": False}


def state_value(txn: Txn, workflow_id: str, run_id: str | None, key: str) -> dict:
    """{run_id, value: msgpack bytes} of a run's state key (default: the current run).
    NotFound names what is missing: the workflow, the run, or the key."""
    record = describe(txn, workflow_id, run_id)
    raw = txn.get(keys.STATE, keys.state_key(workflow_id, record["run_id"], key))
    if raw is None:
        raise NotFound(f"workflow {workflow_id!r} run {record['run_id']} has no state key "
                       f"{key!r}", workflow_id=workflow_id, run_id=record["run_id"], key=key)
    return {"run_id": record["run_id"], "value": bytes(raw)}


def broadcast_value(txn: Txn, name: str) -> dict:
    """{version, found, value, updated_ms} of a broadcast variable; version 0 if it never
    existed."""
    raw = txn.get(keys.BROADCASTS, keys.broadcast_key(name))
    if raw is None:
        return {"version": 0, "found": False, "value": None, "updated_ms": 0}
    entry = codec.unpack(raw)
    return {"version": entry["version"], "found": entry["found"], "value": entry["value"],
            "updated_ms": entry["updated_ms"]}
