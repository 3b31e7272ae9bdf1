"""Workflow state, signals and broadcast variables in the shard state machine (#5), on a
real LMDB store, with the real runtime as the worker (test_execution_sm's scripted Sim)."""

from __future__ import annotations

import pytest

import coda
from coda.client.sdk import definition_of
from coda.errors import Aborted, NotFound
from coda.flow import commands, model, queries
from coda.storage import codec, keys
from test_execution_sm import Sim

T0 = 1_700_000_000_000


@coda.workflow(name="waiter")
async def waiter(n):
    coda.context.set_state("got", [])
    got = []
    for _ in range(n):
        got.append(await coda.context.wait_signal("item"))
        coda.context.set_state("got", got)
    return got


@coda.workflow(name="sender")
async def sender(target):
    try:
        await coda.context.signal_workflow(target, "item", "hello")
        return "sent"
    except coda.errors.NotFound as exc:
        return f"refused: {exc}"


WORKFLOWS = {definition_of(f).name: definition_of(f) for f in (waiter, sender)}


class StateSim(Sim):
    workflows = WORKFLOWS
    task_types = []

    def raw(self, data) -> dict:
        self.index += 1
        result = self.applier.apply(self.index, data)
        self.applier.commit()
        return result

    def signal(self, wid, payload, request_id, name="item") -> dict:
        return self.raw(commands.signal_workflow(
            request_id=request_id, time_ms=self.time_ms, workflow_id=wid, run_id=None,
            name=name, payload=codec.pack(payload)))

    def broadcast(self, name, value, request_id, if_version=None) -> dict:
        return self.raw(commands.set_broadcast(
            request_id=request_id, time_ms=self.time_ms, name=name,
            value=None if value is None else codec.pack(value), if_version=if_version))


@pytest.fixture
def sim(tmp_path):
    s = StateSim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def test_signals_land_once_in_order_and_wake_the_run(sim):
    sim.start("w1", "waiter", {"n": 2})
    sim.step()
    assert "ok" in sim.signal("w1", "a", "r-1")
    assert "ok" in sim.signal("w1", "a-again", "r-1")       # a retry: answered, not added
    assert "ok" in sim.signal("w1", "b", "r-2")
    while sim.step():
        pass
    assert sim.record("w1")["status"] == model.COMPLETED
    assert codec.unpack(sim.record("w1")["result"]) == ["a", "b"]
    received = [e for e in sim.history("w1") if e["type"] == "SignalReceived"]
    assert [(e["signal_id"], codec.unpack(e["payload"])) for e in received] == [(1, "a"),
                                                                               (2, "b")]
    state = sim.read(lambda txn: queries.state_value(txn, "w1", None, "got"))
    assert codec.unpack(state["value"]) == ["a", "b"]
    # The run closed: no more signals, and the error says why.
    closed = sim.signal("w1", "c", "r-3")
    assert closed["error"]["code"] == "NOT_FOUND" and "COMPLETED" in closed["error"]["message"]
    unknown = sim.signal("nobody", "c", "r-4")
    assert unknown["error"]["code"] == "NOT_FOUND"


def test_state_reads_name_what_is_missing(sim):
    sim.start("w2", "waiter", {"n": 1})
    sim.step()
    with pytest.raises(NotFound, match="no state key 'other'"):
        sim.read(lambda txn: queries.state_value(txn, "w2", None, "other"))
    with pytest.raises(NotFound, match="'nobody' not found"):
        sim.read(lambda txn: queries.state_value(txn, "nobody", None, "got"))
    run_id = sim.record("w2")["run_id"]
    row = sim.read(lambda txn: txn.get(keys.STATE, keys.state_key("w2", run_id, "got")))
    assert codec.unpack(row) == []


def test_a_workflow_signals_another_through_the_outbox(sim):
    sim.start("target", "waiter", {"n": 1})
    sim.start("s1", "sender", {"target": "target"})
    sim.start("s2", "sender", {"target": "nobody"})
    while sim.step() or sim.deliver_outbox():
        pass
    assert codec.unpack(sim.record("s1")["result"]) == "sent"
    assert codec.unpack(sim.record("target")["result"]) == ["hello"]
    [received] = [e for e in sim.history("target") if e["type"] == "SignalReceived"]
    assert received["sender"]["workflow_id"] == "s1"
    refused = codec.unpack(sim.record("s2")["result"])
    assert refused.startswith("refused:") and "'nobody' not found" in refused
    types = [e["type"] for e in sim.history("s2")]
    assert types.count("SignalExternalScheduled") == 1 and "SignalExternalFailed" in types
    assert sim.read(lambda txn: list(txn.scan(keys.OUTBOX))) == []


def test_a_redelivered_signal_is_applied_once(sim):
    sim.start("target", "waiter", {"n": 2})
    sim.start("s1", "sender", {"target": "target"})
    sim.step()
    sim.step()
    from coda.flow import outbox
    [(_, entry)] = sim.read(lambda txn: [(k, codec.unpack(v)) for k, v in txn.scan(keys.OUTBOX)])
    sim.raw(outbox.command_for(entry))  # delivered once, its outbox_done lost ...
    sim.deliver_outbox()                # ... and delivered again
    received = [e for e in sim.history("target") if e["type"] == "SignalReceived"]
    assert len(received) == 1


def test_broadcast_versions_move_forward_and_conditional_sets_abort(sim):
    assert sim.broadcast("cfg", {"a": 1}, "b1")["ok"] == {"version": 1}
    assert sim.broadcast("cfg", {"a": 2}, "b2", if_version=1)["ok"] == {"version": 2}
    stale = sim.broadcast("cfg", {"a": 3}, "b3", if_version=1)
    assert stale["error"]["code"] == Aborted.code and "at version 2" in stale["error"]["message"]
    assert sim.broadcast("cfg", {"a": 2}, "b2", if_version=1)["ok"] == {"version": 2}  # retry
    deleted = sim.broadcast("cfg", None, "b4")
    assert deleted["ok"] == {"version": 3}
    assert deleted["effects"]["broadcast"] == [["cfg", 3, False, None, sim.time_ms]]
    current = sim.read(lambda txn: queries.broadcast_value(txn, "cfg"))
    assert (current["version"], current["found"]) == (3, False)
    assert sim.broadcast("cfg", {"a": 4}, "b5", if_version=3)["ok"] == {"version": 4}
    # Deleting what never existed changes nothing and tells nobody.
    never = sim.broadcast("never", None, "b6")
    assert never["ok"] == {"version": 0} and "effects" not in never
    bad = sim.broadcast("", 1, "b7")
    assert bad["error"]["code"] == "INVALID_ARGUMENT" and "broadcast name" in bad["error"]["message"]


def test_malformed_state_commands_fail_the_completion_not_the_shard(sim):
    sim.start("w3", "waiter", {"n": 1})
    [item] = sim.assign()
    bad = sim.raw(commands.complete(
        time_ms=sim.time_ms, request_id="bad-1", workflow_id="w3", run_id=item["run_id"],
        key="", attempt=item["attempt"],
        outcome={"commands": [{"type": "SetState", "key": "k" * 65, "value": codec.pack(1)}]}))
    assert bad["error"]["code"] == "INVALID_ARGUMENT" and "state key" in bad["error"]["message"]
    bad = sim.raw(commands.complete(
        time_ms=sim.time_ms, request_id="bad-2", workflow_id="w3", run_id=item["run_id"],
        key="", attempt=item["attempt"],
        outcome={"commands": [{"type": "RecordRead", "kind": "rumour", "seq": 0}]}))
    assert bad["error"]["code"] == "INVALID_ARGUMENT" and "rumour" in bad["error"]["message"]
    # Nothing was written: the workflow task still runs and can complete.
    assert sim.record("w3")["wft"]["state"] == "running"
    assert sim.read(lambda txn: list(txn.scan(keys.STATE))) == []
