"""Dispatch messages built from a shard's state: what a supervisor is sent to run.

Read by the dispatcher (flow.dispatcher) from the committed view after a commit, and by
the replica's tick thread from the leader's pending view when a new run's first
workflow task is dispatched before its start commits (flow.replica, speculative
dispatch). Pure functions of a transaction: either reader builds the same message.
"""

from __future__ import annotations

from coda.api import flow_pb2 as pb
from coda.flow import limits
from coda.storage import codec, keys


def split_by_bytes(dispatches: list, bytes_max: int) -> list[list]:
    """`dispatches` in order, in groups of at most bytes_max serialized bytes (a larger
    one alone)."""
    groups, current, current_bytes = [], [], 0
    for dispatch in dispatches:
        size_bytes = dispatch.ByteSize()
        if current and current_bytes + size_bytes > bytes_max:
            groups.append(current)
            current, current_bytes = [], 0
        current.append(dispatch)
        current_bytes += size_bytes
    if current:
        groups.append(current)
    return groups


def dispatch_of(txn, item: dict, history_after_event_id: int = 0) -> pb.Dispatch:
    """The Dispatch message of a committed assignment, from the committed state."""
    wid, run_id = item["workflow_id"], item["run_id"]
    if item["kind"] == "wft":
        started = codec.unpack(txn.get(keys.HISTORY, keys.history_key(wid, run_id, 1)))
        # The tail must fit one gRPC message beside the run's input; past that (or the
        # cap) it goes empty, marked as starting after the last event, and the
        # supervisor fetches the whole history (Supervisor._start_after_fetch).
        tail_bytes_max = min(limits.wft_history_tail_bytes_max,
                             limits.grpc_message_bytes_max - len(started["input"] or b"")
                             - limits.command_envelope_bytes_max)
        events, tail_bytes = [], 0  # the events as stored: sent without decoding them
        start = keys.history_key(wid, run_id, history_after_event_id + 1)
        for key, raw in txn.scan(keys.HISTORY, prefix=keys.history_prefix(wid, run_id),
                                 start=start):
            if keys.history_event_id(key) > item["history_length"]:
                break  # what the assignment saw, even if more was appended since
            tail_bytes += len(raw)
            if tail_bytes > tail_bytes_max:
                events, history_after_event_id = [], item["history_length"]
                break
            events.append(raw)
        return pb.Dispatch(
            workflow_id=wid, run_id=run_id, task_key="", type_name=item["workflow_type"],
            attempt=item["attempt"], input=started["input"],
            history=codec.pack_array_of_packed(events),
            workflow_attempt=item["workflow_attempt"], start_time_ms=item["start_time_ms"],
            history_after_event_id=history_after_event_id)
    task = codec.unpack(txn.get(keys.TASKS, keys.task_key(wid, run_id, item["key"])))
    return pb.Dispatch(
        workflow_id=wid, run_id=run_id, task_key=item["key"], type_name=task["task"],
        attempt=item["attempt"], input=task["args"] or b"",
        idempotency_key=task["idempotency_key"],
        heartbeat_details=task.get("heartbeat_details") or b"",
        start_to_close_timeout_ms=task["timeouts_ms"].get("start_to_close_timeout") or 0,
        heartbeat_timeout_ms=task["timeouts_ms"].get("heartbeat_timeout") or 0)
