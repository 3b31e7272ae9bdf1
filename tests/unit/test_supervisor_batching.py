"""The supervisor's transport bookkeeping, without a network or worker processes.

CompletionBatcher and CreditLedger are pure (time is an argument); the Supervisor's
SessionHost methods are driven directly, with a fake worker pool standing in for
coda.supervisor.pool.WorkerPool.
"""

from __future__ import annotations

import logging
import math
import random
import time

import pytest

from coda.api import flow_pb2 as pb
from coda.storage import codec
from coda.supervisor.sessions import Backoff, CompletionBatcher, CreditLedger
from coda.supervisor.supervisor import (SHUTDOWN_ERROR, Supervisor, completion_for,
                                        item_from_dispatch, worker_message)


def completion(n: int, **fields) -> pb.Completion:
    return pb.Completion(request_id=f"r{n}", workflow_id=f"wf-{n}", run_id="run",
                         task_key=f"k{n}", attempt=1, result=b"\xc0", **fields)


def ids(batch) -> list[str]:
    return [c.request_id for c in batch]


# --- CompletionBatcher -------------------------------------------------------------------

def in_flight(batcher: CompletionBatcher, now_s: float) -> None:
    """Send one completion and leave it unanswered: later ones then batch (Nagle)."""
    batcher.add(completion(99), now_s)
    assert batcher.due(now_s)  # nothing was in flight: it goes at once
    assert ids(batcher.take_batch(now_s)) == ["r99"]


def test_an_idle_batcher_sends_at_once():
    batcher = CompletionBatcher(batch_items_max=256, batch_wait_s=0.02)
    batcher.add(completion(1), now_s=5.0)
    assert batcher.due(5.0) and batcher.next_due_s() == float("-inf")
    assert ids(batcher.take_batch(5.0)) == ["r1"]
    batcher.add(completion(2), now_s=5.001)  # r1 is unanswered: r2 waits for company
    assert not batcher.due(5.001)
    batcher.ack(["r1"])
    assert batcher.due(5.001)                # answered: nothing in flight, r2 goes


def test_a_full_batch_is_due_at_once_and_capped_at_the_count():
    batcher = CompletionBatcher(batch_items_max=4, batch_wait_s=0.02)
    in_flight(batcher, 10.0)
    for n in range(3):
        batcher.add(completion(n), now_s=10.0)
    assert not batcher.due(10.0)
    batcher.add(completion(3), now_s=10.0)
    assert batcher.due(10.0)
    batcher.add(completion(4), now_s=10.0)
    assert ids(batcher.take_batch(10.0)) == ["r0", "r1", "r2", "r3"]
    # The fifth waits for its own window.
    assert not batcher.due(10.0)
    assert batcher.due(10.02)
    assert ids(batcher.take_batch(10.02)) == ["r4"]


def test_a_lone_completion_waits_at_most_the_window():
    batcher = CompletionBatcher(batch_items_max=256, batch_wait_s=0.02)
    assert batcher.next_due_s() is None and not batcher.due(0.0)
    in_flight(batcher, 5.0)
    batcher.add(completion(1), now_s=5.0)
    batcher.add(completion(2), now_s=5.015)
    assert batcher.next_due_s() == pytest.approx(5.02)  # from the first unsent one
    assert not batcher.due(5.019)
    assert batcher.due(5.02)
    assert ids(batcher.take_batch(5.02)) == ["r1", "r2"]
    assert batcher.next_due_s() is None and batcher.unsent == 0
    assert len(batcher) == 3  # sent, not yet answered


def test_a_batch_is_bounded_by_bytes_but_always_carries_one():
    batcher = CompletionBatcher(batch_items_max=256, batch_bytes_max=100)
    batcher.add(completion(1), 0.0, size_bytes=40)
    batcher.add(completion(2), 0.0, size_bytes=40)
    batcher.add(completion(3), 0.0, size_bytes=40)
    assert batcher.due(0.0)  # 120 bytes waiting: over the byte bound, no need to wait
    assert ids(batcher.take_batch(0.0)) == ["r1", "r2"]
    assert ids(batcher.take_batch(0.0)) == ["r3"]
    batcher.add(completion(4), 0.0, size_bytes=500)
    assert ids(batcher.take_batch(0.0)) == ["r4"]


def test_acks_and_rejections_drop_completions_and_repeats_are_harmless():
    batcher = CompletionBatcher()
    for n in range(3):
        batcher.add(completion(n), 0.0)
    batcher.take_batch(1.0)
    assert ids(batcher.ack(["r0", "nope"])) == ["r0"]
    assert ids(batcher.reject(["r2"])) == ["r2"]
    assert batcher.ack(["r0"]) == []
    assert ids(batcher.pending()) == ["r1"]
    assert batcher.requeue_unacked() == 1
    assert ids(batcher.take_batch(2.0)) == ["r1"]  # rejected r2 is never resent


def test_unanswered_completions_are_resent_after_a_reconnect_with_their_request_ids():
    batcher = CompletionBatcher(batch_items_max=2, batch_wait_s=0.02)
    originals = [completion(n) for n in range(5)]
    for c in originals[:4]:
        batcher.add(c, 0.0)
    first, second = batcher.take_batch(0.0), batcher.take_batch(0.0)
    assert ids(first) == ["r0", "r1"] and ids(second) == ["r2", "r3"]
    batcher.ack(["r1"])
    batcher.add(originals[4], 0.5)  # finished while the stream was down: never sent
    assert batcher.requeue_unacked() == 3
    assert batcher.due(0.5) and batcher.next_due_s() == -math.inf  # resent at once
    resent = batcher.take_batch(0.5) + batcher.take_batch(0.5) + batcher.take_batch(0.5)
    assert ids(resent) == ["r0", "r2", "r3", "r4"]  # same ids, original order
    assert all(a is b for a, b in zip(resent, [originals[i] for i in (0, 2, 3, 4)]))


def test_completions_unanswered_past_the_ack_timeout_go_again_on_the_same_stream():
    batcher = CompletionBatcher(ack_timeout_s=15.0)
    batcher.add(completion(1), 0.0)
    batcher.add(completion(2), 0.0)
    batcher.take_batch(0.0)
    batcher.ack(["r2"])
    assert batcher.requeue_stale(14.9) == 0
    assert batcher.requeue_stale(15.0) == 1
    assert batcher.due(15.0)
    # Answered while queued for the resend: dropped from the queue too.
    assert ids(batcher.ack(["r1"])) == ["r1"]
    assert not batcher.due(15.0) and batcher.unsent == 0 and len(batcher) == 0


def test_the_resend_buffer_reports_full_at_its_bound():
    batcher = CompletionBatcher(buffer_items_max=2)
    batcher.add(completion(1), 0.0)
    assert not batcher.full
    batcher.add(completion(2), 0.0)
    assert batcher.full
    batcher.take_batch(0.0)
    batcher.ack(["r1"])
    assert not batcher.full


# --- CreditLedger ------------------------------------------------------------------------

def test_slots_are_split_evenly_with_at_least_one_per_shard():
    assert CreditLedger(64, 4).share == 16
    assert CreditLedger(10, 4).share == 2
    assert CreditLedger(2, 8).share == 1


def test_credit_goes_back_to_the_shard_whose_item_finished_in_one_grant_per_flush():
    ledger = CreditLedger(8, 2)
    assert ledger.on_hello(0) == 4 and ledger.on_hello(1) == 4
    for shard in (0, 0, 1):
        assert ledger.on_dispatch(shard)
    ledger.on_finish(0)
    ledger.on_finish(0)
    assert ledger.take_grant(1) == 0
    assert ledger.take_grant(0) == 2
    assert ledger.take_grant(0) == 0
    assert ledger.outstanding == [4, 3] and ledger.running == [0, 1]


def test_a_full_resend_buffer_withholds_credit_until_it_drains():
    ledger = CreditLedger(4, 1)
    ledger.on_hello(0)
    ledger.on_dispatch(0)
    ledger.on_finish(0)
    assert ledger.take_grant(0, blocked=True) == 0
    assert ledger.take_grant(0, blocked=False) == 1


def test_a_new_session_offers_the_share_less_what_still_runs():
    ledger = CreditLedger(4, 1)
    ledger.on_hello(0)
    for _ in range(3):
        ledger.on_dispatch(0)
    ledger.on_finish(0)  # owed 1, but the stream breaks before it is granted
    assert ledger.on_hello(0) == 2  # 4 slots, 2 still running
    assert ledger.outstanding == [2] and ledger.owed == [0]
    assert ledger.on_hello(0, blocked=True) == 0
    assert ledger.take_grant(0) == 2


def test_dispatches_beyond_the_credit_are_flagged_and_stopping_grants_nothing():
    ledger = CreditLedger(1, 1)
    ledger.on_hello(0)
    assert ledger.on_dispatch(0)
    assert not ledger.on_dispatch(0)
    ledger.stop()
    ledger.on_finish(0)
    assert ledger.take_grant(0) == 0
    assert ledger.on_hello(0) == 0


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(random.Random(7), initial_s=0.05, max_s=1.0)
    delays = [backoff.next_s() for _ in range(8)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(0.5 <= d <= 1.0 for d in delays[5:])
    backoff.reset()
    assert backoff.next_s() <= 0.05


# --- conversions ---------------------------------------------------------------------------

def task_dispatch(n: int = 1, **fields) -> pb.Dispatch:
    return pb.Dispatch(workflow_id=f"wf-{n}", run_id="run-1", task_key=f"normalize/{n}",
                       type_name="normalize", attempt=2, input=codec.pack({"x": n}),
                       idempotency_key=f"idem-{n}", **fields)


def workflow_dispatch(n: int = 1) -> pb.Dispatch:
    history = [{"event_id": 1, "type": "WorkflowExecutionStarted", "time_ms": 5,
                "input": codec.pack({}), "workflow_type": "process_event"}]
    return pb.Dispatch(workflow_id=f"wf-{n}", run_id="run-1", type_name="process_event",
                       attempt=3, input=codec.pack({}), history=codec.pack(history),
                       workflow_attempt=1, start_time_ms=5)


def test_dispatches_become_the_worker_messages_of_the_protocol():
    task = worker_message(task_dispatch(1), "a")
    assert task == {"op": "task", "id": "a", "task": "normalize", "args": codec.pack({"x": 1}),
                    "workflow_id": "wf-1", "run_id": "run-1", "key": "normalize/1",
                    "attempt": 2, "idempotency_key": "idem-1", "heartbeat_details": None}
    assert worker_message(task_dispatch(1, heartbeat_details=b"\x01"), "a")["heartbeat_details"] == b"\x01"
    wf = worker_message(workflow_dispatch(1), "b")
    assert wf["op"] == "workflow_task" and wf["workflow_type"] == "process_event"
    assert wf["history"][0]["type"] == "WorkflowExecutionStarted"
    assert (wf["workflow_attempt"], wf["start_time_ms"]) == (1, 5)


def test_completions_carry_results_commands_and_failures():
    task_item = item_from_dispatch(0, task_dispatch(1))
    ok = completion_for(task_item, {"op": "done", "result": b"\x01"}, request_id="q",
                        payload_bytes_max=100)
    assert (ok.WhichOneof("outcome"), ok.result, ok.attempt, ok.task_key) == \
        ("result", b"\x01", 2, "normalize/1")
    failed = completion_for(task_item, {"error": {"type": "ValueError", "message": "bad",
                                                  "stack": "tb", "non_retryable": True}},
                            request_id="q", payload_bytes_max=100)
    assert failed.failure == pb.Failure(error_type="ValueError", message="bad", stack="tb",
                                        non_retryable=True)
    too_big = completion_for(task_item, {"result": b"x" * 101}, request_id="q",
                             payload_bytes_max=100)
    assert too_big.failure.error_type == "PayloadError" and too_big.failure.non_retryable
    wf_item = item_from_dispatch(0, workflow_dispatch(1))
    commands = [{"type": "CompleteWorkflow", "result": codec.pack(1)}]
    wf = completion_for(wf_item, {"commands": commands}, request_id="q", payload_bytes_max=100)
    assert wf.task_key == "" and codec.unpack(wf.workflow_commands) == commands


# --- the Supervisor as its sessions see it -----------------------------------------------

class FakePool:
    def __init__(self):
        self.submitted: list[dict] = []
        self.cancelled: list[str] = []

    async def start(self):
        return {"workflow_types": ["process_event"], "task_types": ["normalize"]}

    def submit(self, item):
        self.submitted.append(item)

    def cancel(self, item_id):
        self.cancelled.append(item_id)

    def in_flight(self):
        return len(self.submitted)

    def worker_pids(self):
        return [1234]

    async def stop(self, deadline_s):
        pass


def make_supervisor(shards: int = 2, slots: int = 8) -> tuple[Supervisor, FakePool]:
    pool = FakePool()
    sup = Supervisor(["127.0.0.1:1"], "examples.process_event", workers=1, slots=slots,
                     build_id="b", supervisor_id="sup-1", pool=pool)
    sup.workflow_types, sup.task_types = ["process_event"], ["normalize"]
    sup.attach_shards(shards)
    for shard in range(shards):
        sup.hello(shard)
    return sup, pool


def messages_of(sup: Supervisor, shard: int, now_s: float) -> dict:
    out = {"completions": [], "credit": 0}
    for message in sup.outgoing(shard, now_s):
        if message.WhichOneof("body") == "completions":
            out["completions"].append(list(message.completions.completions))
            out["credit"] += message.completions.slots  # credit riding with completions
        else:
            out["credit"] += message.credit.slots
    return out


def test_a_dispatch_goes_to_the_pool_and_its_result_back_with_one_credit():
    sup, pool = make_supervisor()
    sup.on_dispatches(1, [task_dispatch(1), task_dispatch(2)])
    assert [m["key"] for m in pool.submitted] == ["normalize/1", "normalize/2"]
    first, second = (m["id"] for m in pool.submitted)
    sup.on_event({"op": "done", "id": first, "result": b"\x01"})
    sup.on_event({"op": "done", "id": second, "error": {"type": "E", "message": "m"}})
    sup.on_event({"op": "done", "id": second, "result": b"\x02"})  # late repeat: ignored
    out = messages_of(sup, 1, time.monotonic() + 1)
    assert [[c.task_key for c in batch] for batch in out["completions"]] == \
        [["normalize/1", "normalize/2"]]
    assert out["credit"] == 2  # one grant for both, in their completion batch
    assert messages_of(sup, 0, time.monotonic() + 1) == {"completions": [], "credit": 0}


def test_credit_waits_for_the_flush_of_the_completions_that_freed_it():
    sup, pool = make_supervisor(shards=1)
    sup.on_dispatches(0, [task_dispatch(1), task_dispatch(2)])
    now_s = time.monotonic()
    sup.on_event({"op": "done", "id": pool.submitted[0]["id"], "result": b"\x01"})
    out = messages_of(sup, 0, now_s)  # idle: the first completion goes at once, with credit
    assert len(out["completions"]) == 1 and out["credit"] == 1
    sup.on_event({"op": "done", "id": pool.submitted[1]["id"], "result": b"\x01"})
    # The first is unanswered: the second waits for company, and its credit with it.
    assert messages_of(sup, 0, now_s) == {"completions": [], "credit": 0}
    out = messages_of(sup, 0, time.monotonic() + 0.021)
    assert len(out["completions"]) == 1 and out["credit"] == 1


def test_acks_drop_rejections_are_logged_and_a_reconnect_lists_what_is_unanswered(caplog):
    sup, pool = make_supervisor(shards=1)
    sup.on_dispatches(0, [task_dispatch(n) for n in range(3)] + [workflow_dispatch(9)])
    for message in pool.submitted[:3]:
        sup.on_event({"op": "done", "id": message["id"], "result": b"\x01"})
    sent = messages_of(sup, 0, 1e9)["completions"][0]
    request_ids = [c.request_id for c in sent]
    with caplog.at_level(logging.WARNING):
        sup.on_acks(0, pb.CompletionAcks(request_ids=[request_ids[0]], rejected=[
            pb.Rejection(request_id=request_ids[1], reason="stale attempt")]))
    assert "stale attempt" in caplog.text
    hello = sup.hello(0)  # the stream broke: a new session
    assert sorted((r.workflow_id, r.task_key) for r in hello.running) == \
        [("wf-2", "normalize/2"), ("wf-9", "")]  # unacked completion + running workflow task
    assert hello.slots == 8 - 1  # one item still runs
    resent = messages_of(sup, 0, 0.0)["completions"]
    assert [c.request_id for c in resent[0]] == [request_ids[2]]


def test_a_full_resend_buffer_stops_the_credit_of_its_shard_only():
    sup, pool = make_supervisor(shards=2, slots=8)
    sup.batchers[0] = CompletionBatcher(buffer_items_max=2)
    sup.on_dispatches(0, [task_dispatch(n) for n in range(3)])
    sup.on_dispatches(1, [task_dispatch(7)])
    for message in pool.submitted:
        sup.on_event({"op": "done", "id": message["id"], "result": b"\x01"})
    assert messages_of(sup, 0, 1e9)["credit"] == 0
    assert messages_of(sup, 1, 1e9)["credit"] == 1
    request_ids = [c.request_id for c in sup.batchers[0].pending()]
    sup.on_acks(0, pb.CompletionAcks(request_ids=request_ids[:2]))
    assert messages_of(sup, 0, 1e9)["credit"] == 3


def test_cancel_reaches_the_pool_and_dispatches_while_draining_fail_at_once():
    sup, pool = make_supervisor(shards=1)
    sup.on_dispatches(0, [task_dispatch(1)])
    sup.on_cancel(0, [pb.RunningItem(workflow_id="wf-1", run_id="run-1",
                                     task_key="normalize/1", attempt=2)])
    assert pool.cancelled == [pool.submitted[0]["id"]]
    sup.state = "draining"
    sup.ledger.stop()
    sup.on_dispatches(0, [task_dispatch(2)])
    assert len(pool.submitted) == 1
    failed = [c for c in sup.batchers[0].pending() if c.task_key == "normalize/2"]
    assert failed[0].failure.error_type == SHUTDOWN_ERROR
    assert not failed[0].failure.non_retryable
    assert messages_of(sup, 0, 1e9)["credit"] == 0


def test_a_duplicate_dispatch_of_a_running_item_is_ignored_and_its_credit_returned():
    sup, pool = make_supervisor(shards=1)
    sup.on_dispatches(0, [task_dispatch(1), task_dispatch(1)])
    assert len(pool.submitted) == 1
    assert messages_of(sup, 0, 1e9)["credit"] == 1


def test_heartbeats_carry_the_latest_task_details_once():
    sup, pool = make_supervisor(shards=1)
    sup.on_dispatches(0, [task_dispatch(1)])
    item_id = pool.submitted[0]["id"]
    sup.on_event({"op": "heartbeat", "id": item_id, "details": b"\x01"})
    sup.on_event({"op": "heartbeat", "id": item_id, "details": b"\x02"})
    beat = sup.heartbeat(0).heartbeat
    assert [(t.task_key, t.attempt, t.details) for t in beat.tasks] == [("normalize/1", 2, b"\x02")]
    assert list(sup.heartbeat(0).heartbeat.tasks) == []


def test_a_history_that_is_not_msgpack_fails_the_workflow_task_without_a_worker():
    sup, pool = make_supervisor(shards=1)
    bad = workflow_dispatch(1)
    bad.history = b"\xc1"
    sup.on_dispatches(0, [bad])
    assert pool.submitted == []
    [failed] = sup.batchers[0].pending()
    assert failed.failure.error_type == "PayloadError" and failed.task_key == ""
