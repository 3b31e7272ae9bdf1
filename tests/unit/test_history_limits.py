"""Limits of long-lived runs (#9): history events and bytes (the cluster's settings,
stamped by the leader), the continue-as-new suggestion before the limit, open tasks
refused at the call, and a workflow task whose commands Flow refuses failing visibly."""

from __future__ import annotations

import asyncio

import pytest

import coda
from coda.client.sdk import definition_of
from coda.client.workflow_runtime import RunInfo, WorkflowRun
from coda.errors import ConfigError, InvalidArgument, LimitExceeded
from coda.flow import commands, config, limits, model, sessions
from coda.storage import codec
from test_execution_sm import Sim, inc

LIMIT = {"events": limits.history_events_per_run_min, "bytes": 1 << 30}


@coda.workflow(name="chatty")
async def chatty(n):
    for _ in range(10_000):
        n = await coda.context.spawn_task(inc, args={"n": n})
    return n


class LimitSim(Sim):
    workflows = {"chatty": definition_of(chatty)}
    task_types = ["inc"]

    def complete(self, item, outcome) -> dict:
        return super().complete(item, dict(outcome, history_limit=LIMIT))


@pytest.fixture
def sim(tmp_path):
    s = LimitSim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def test_a_run_at_its_history_limit_fails_and_was_told_before(sim):
    sim.start("c1", "chatty", {"n": 0})
    suggested_at = None
    while sim.record("c1")["status"] == model.RUNNING:
        assert sim.step()
        if suggested_at is None and sim.record("c1").get("continue_as_new_suggested"):
            suggested_at = sim.record("c1")["history_length"]
    record = sim.record("c1")
    assert record["status"] == model.FAILED
    assert record["failure"]["type"] == "HistoryLimitExceeded"
    assert f"the limit is {LIMIT['events']} events" in record["failure"]["message"]
    assert "continue_as_new" in record["failure"]["message"]
    events = LIMIT["events"]
    assert events * limits.history_warning_percent // 100 <= suggested_at < events
    assert record["history_length"] <= events + 5  # bounded: the next workflow task stops it
    warnings = [e for e in sim.effects if "history_warnings" in e]
    assert [w["history_warnings"] for w in warnings] == [["c1"]]  # once
    # A full history takes no more signals (a final error, not retried).
    sim.start("c2", "chatty", {"n": 0})
    while sim.record("c2")["history_length"] < events:
        sim.step()
    full = sim.applier.apply(sim.index + 1, commands.signal_workflow(
        request_id="s-1", time_ms=sim.time_ms, workflow_id="c2", run_id=None, name="x",
        payload=codec.pack(1), history_limit=LIMIT))
    sim.index += 1
    sim.applier.commit()
    assert full["error"]["code"] == LimitExceeded.code


def test_history_limits_are_validated_in_the_config():
    base = {"node_id": "n1", "data_dir": "/tmp/x", "shards": 1, "secret": "s" * 16,
            "nodes": [{"id": "n1", "client": "127.0.0.1:7100", "raft": "127.0.0.1:7200",
                       "metrics": "127.0.0.1:7110"}]}
    cfg = config.from_mapping(dict(base, history_events_per_run_max=1000))
    assert cfg.history_limit()["events"] == 1000
    assert config.to_mapping(cfg)["history_events_per_run_max"] == 1000
    with pytest.raises(ConfigError, match="history_events_per_run_max must be an integer in"):
        config.from_mapping(dict(base, history_events_per_run_max=10))
    with pytest.raises(ConfigError, match="history_bytes_per_run_max"):
        config.from_mapping(dict(base, history_bytes_per_run_max=limits.history_bytes_per_run_max + 1))


@coda.workflow(name="fan")
async def fan():
    futures = []
    try:
        while True:
            futures.append(coda.context.spawn_task("noop", args={}))
    except LimitExceeded as exc:
        return [len(futures), str(exc)]


def test_open_tasks_over_the_limit_are_refused_at_the_call():
    run = WorkflowRun(definition_of(fan), {}, RunInfo("f", "r", 0))
    commands_ = run.advance([])
    count, message = commands_[-1]["result"]
    assert count == limits.open_tasks_per_run_max == len(commands_) - 1
    assert f"the limit is {limits.open_tasks_per_run_max}" in message


class FakeReplica:
    def __init__(self, refusal):
        self.refusal = refusal
        self.proposed = []

    async def propose(self, data):
        decoded = commands.decode(data)
        self.proposed.append(decoded.body)
        if "commands" in decoded.body:
            raise self.refusal
        return {"accepted": True}


def test_refused_workflow_commands_fail_the_workflow_task_instead_of_hanging_it():
    from coda.api import flow_pb2 as pb
    completion = pb.Completion(request_id="r1", workflow_id="w", run_id="r", attempt=1,
                               workflow_commands=codec.pack([{"type": "Bogus"}]))
    replica = FakeReplica(InvalidArgument("unknown workflow command 'Bogus'"))
    outcome = asyncio.run(sessions._complete_one(replica, completion, 1 << 20, LIMIT))
    assert outcome == ("accepted", None)
    first, second = replica.proposed
    assert first["history_limit"] == LIMIT and first["request_id"] == "r1"
    assert second["request_id"] == "r1/refused"
    assert second["failure"]["type"] == "InvalidArgument"
    assert "refused this workflow task's commands: unknown workflow command" in \
        second["failure"]["message"]
