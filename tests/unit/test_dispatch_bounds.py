"""Dispatches stay within gRPC's message limit (flow.dispatcher): an assignment of big
items goes as several `dispatches` messages, and a workflow task whose history tail
would not fit beside its input goes without it (the supervisor fetches the history)."""

from __future__ import annotations

import pytest

from coda.api import flow_pb2 as pb
from coda.flow import limits
from coda.flow.dispatches import dispatch_of, split_by_bytes
from coda.storage import codec, keys
from coda.storage.env import LmdbOptions, ShardStore


def _task(size: int) -> pb.Dispatch:
    return pb.Dispatch(workflow_id="w", run_id="r", task_key=f"k{size}", input=b"x" * size)


def test_big_dispatches_are_split_and_none_is_lost_or_reordered():
    items = [_task(n) for n in (3_000_000, 3_000_000, 100, 5_000_000, 100, 100)]
    groups = split_by_bytes(items, 4 * 1024 * 1024)
    assert [d for g in groups for d in g] == items  # all of them, in order
    assert [len(g) for g in groups] == [1, 2, 1, 2]
    for group in groups:
        size = sum(d.ByteSize() for d in group)
        assert len(group) == 1 or size <= 4 * 1024 * 1024
    assert split_by_bytes([], 100) == []


def _store_with_history(tmp_path, events: list[dict]) -> ShardStore:
    store = ShardStore(str(tmp_path / "lmdb"), LmdbOptions(sync=False, metasync=False))
    batch = store.begin_batch()
    batch.write([[keys.HISTORY, keys.history_key("w", "r", e["event_id"]), codec.pack(e)]
                 for e in events])
    batch.commit(1)
    return store


def _wft(history_length: int) -> dict:
    return {"kind": "wft", "workflow_id": "w", "run_id": "r", "workflow_type": "t",
            "attempt": 1, "workflow_attempt": 1, "start_time_ms": 0,
            "history_length": history_length}


def test_a_workflow_task_carries_its_history_tail_when_it_fits(tmp_path):
    events = [{"event_id": 1, "type": "WorkflowExecutionStarted", "input": b"in"},
              {"event_id": 2, "type": "TaskCompleted", "result": b"r" * 1000},
              {"event_id": 3, "type": "WorkflowTaskScheduled"}]
    store = _store_with_history(tmp_path, events)
    try:
        with store.read() as txn:
            dispatch = dispatch_of(txn, _wft(3), 1)
        assert dispatch.history_after_event_id == 1
        assert [e["event_id"] for e in codec.unpack(dispatch.history)] == [2, 3]
    finally:
        store.close()


_BIG_TAIL = limits.wft_history_tail_bytes_max // 2 + 1


@pytest.mark.parametrize("input_bytes, results_bytes", [
    (2, [_BIG_TAIL, _BIG_TAIL]),                      # a tail past its cap
    (limits.payload_bytes_max - 1000, [200 * 1024]),  # a tail under it, past the room an
])                                                    # input near the payload cap leaves
def test_a_history_tail_that_would_not_fit_is_left_to_a_fetch(tmp_path, input_bytes,
                                                               results_bytes):
    events = [{"event_id": 1, "type": "WorkflowExecutionStarted", "input": b"i" * input_bytes}]
    events += [{"event_id": 2 + n, "type": "TaskCompleted", "result": b"r" * size}
               for n, size in enumerate(results_bytes)]
    store = _store_with_history(tmp_path, events)
    try:
        with store.read() as txn:
            dispatch = dispatch_of(txn, _wft(len(events)), 0)
        # No tail, and "everything up to the last event is yours already": a supervisor
        # without it in its cache fetches the history (Supervisor._start_after_fetch).
        assert codec.unpack(dispatch.history) == []
        assert dispatch.history_after_event_id == len(events)
        assert dispatch.ByteSize() < limits.grpc_message_bytes_max
    finally:
        store.close()


def test_a_tasks_run_history_gives_way_to_args_at_the_payload_cap(tmp_path):
    """A task dispatch carries its run's news for chaining only where one gRPC message
    still holds args, heartbeat details and the news together."""
    from coda.flow.dispatcher import Session, _with_run_history
    events = [{"event_id": 1, "type": "WorkflowExecutionStarted", "input": b"in"},
              {"event_id": 2, "type": "TaskScheduled", "note": b"n" * 40_000}]
    store = _store_with_history(tmp_path, events)
    item = {"kind": "task", "workflow_id": "w", "run_id": "r", "key": "k", "attempt": 1}
    try:
        for args_bytes, carried in ((1000, True), (limits.payload_bytes_max, False)):
            session = Session("s1", ("q",), credit=1)
            session.history_sent[("w", "r")] = 1
            dispatch = pb.Dispatch(workflow_id="w", run_id="r", task_key="k",
                                   input=b"a" * args_bytes,
                                   heartbeat_details=b"h" * limits.task_heartbeat_details_bytes_max)
            with store.read() as txn:
                dispatch = _with_run_history(txn, session, item, dispatch,
                                             [limits.task_history_bytes_per_message_max])
            assert bool(dispatch.history) is carried, args_bytes
            assert dispatch.ByteSize() < limits.grpc_message_bytes_max
    finally:
        store.close()


def test_a_merged_list_page_is_cut_by_bytes_where_its_cursor_can_resume():
    from coda.flow.listing import merge_ordered
    pages = [{"items": [b"a" + b"x" * 10, b"c" + b"x" * 10], "exhausted": True,
              "resume_after": None},
             {"items": [b"b" + b"x" * 10, b"d" + b"x" * 10], "exhausted": True,
              "resume_after": None}]
    key = lambda item: item[:1]  # noqa: E731
    items, after = merge_ordered(pages, 100, key, size_of=len, bytes_max=25)
    assert items == [b"a" + b"x" * 10, b"b" + b"x" * 10] and after == b"b"
    # One item bigger than the budget still makes a page (no page may be empty).
    items, after = merge_ordered(pages, 100, key, size_of=len, bytes_max=5)
    assert items == [b"a" + b"x" * 10] and after == b"a"
    items, after = merge_ordered(pages, 100, key, size_of=len, bytes_max=1000)
    assert len(items) == 4 and after is None
