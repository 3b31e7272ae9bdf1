"""The small pieces behind the Flow and supervisor metrics: timer kinds to retries and
timeouts, per-worker process figures, ack latency, item outcomes."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY

from coda.api import flow_pb2 as pb
from coda.flow import metrics
from coda.flow import sm_common as c
from coda.flow.dispatcher import by_kind, timer_kind
from coda.storage import codec
from coda.supervisor.metrics import process_usage
from coda.supervisor.sessions import CompletionBatcher
from coda.supervisor.supervisor import SHUTDOWN_ERROR, TIMEOUT_ERROR, failure, outcome_of


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_fired_timers_count_as_retries_and_timeouts_by_kind():
    shard = "77"
    metrics.init_shard(shard)
    assert sample("coda_shard_retries_total", shard=shard, of="task") == 0.0  # present at 0
    metrics.count_timers_fired(shard, c.TIMER_TASK_RETRY, 3)
    metrics.count_timers_fired(shard, c.TIMER_HEARTBEAT, 2)
    metrics.count_timers_fired(shard, c.TIMER_EXECUTION_TIMEOUT, 1)
    metrics.count_timers_fired(shard, c.TIMER_USER, 4)
    metrics.count_timers_fired(shard, "from_a_newer_node", 5)
    metrics.count_timers_fired(shard, c.TIMER_WFT_RETRY, 0)
    assert sample("coda_shard_retries_total", shard=shard, of="task") == 3
    assert sample("coda_shard_retries_total", shard=shard, of="workflow_task") == 0
    assert sample("coda_shard_timeouts_total", shard=shard, timeout="heartbeat") == 2
    assert sample("coda_shard_timeouts_total", shard=shard, timeout="execution") == 1
    assert sample("coda_shard_timers_fired_total", shard=shard, kind=c.TIMER_USER) == 4
    assert sample("coda_shard_timers_fired_total", shard=shard, kind="other") == 5
    assert sample("coda_shard_timers_fired_total", shard=shard, kind="from_a_newer_node") == 0


def test_due_timers_are_grouped_by_their_stored_kind():
    raw = {b"k1": codec.pack({"kind": c.TIMER_TASK_RETRY}), b"k2": codec.pack({"kind": c.TIMER_USER}),
           b"k3": codec.pack({"kind": c.TIMER_TASK_RETRY}), b"k4": b"\xc1 not msgpack"}
    due = {key: timer_kind(value) for key, value in raw.items()}
    assert by_kind(due) == {c.TIMER_TASK_RETRY: [b"k1", b"k3"], c.TIMER_USER: [b"k2"],
                            "other": [b"k4"]}


def test_process_usage_reads_this_process_and_none_for_a_missing_one():
    usage = process_usage(os.getpid())
    if not os.path.exists("/proc/self/stat"):
        assert usage is None
        return
    cpu_s, rss_bytes = usage
    assert cpu_s > 0 and rss_bytes > 1024 * 1024
    assert process_usage(2 ** 30) is None


def test_acks_carry_the_time_each_completion_was_last_sent():
    batcher = CompletionBatcher()
    for n in range(2):
        batcher.add(pb.Completion(request_id=f"r{n}", workflow_id="w", run_id="r", attempt=1), 0.0)
    assert len(batcher.take_batch(5.0)) == 2
    acked = batcher.ack_timed(["r0", "r0", "unknown"])
    assert [(completion.request_id, sent_s) for completion, sent_s in acked] == [("r0", 5.0)]
    assert [c.request_id for c in batcher.ack(["r1"])] == ["r1"] and len(batcher) == 0


def test_item_outcomes_come_from_the_completion():
    ok = pb.Completion(request_id="a", result=b"\x01")
    assert outcome_of(ok) == "completed"
    assert outcome_of(pb.Completion(request_id="b", workflow_commands=b"\x90")) == "completed"
    for error_type, outcome in ((TIMEOUT_ERROR, "timed_out"), (SHUTDOWN_ERROR, "shutdown"),
                                ("WorkerDied", "worker_died"), ("ValueError", "failed")):
        completion = pb.Completion(request_id="c")
        completion.failure.CopyFrom(failure(error_type, "m"))
        assert outcome_of(completion) == outcome, error_type
