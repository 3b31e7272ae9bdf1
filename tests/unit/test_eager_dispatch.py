"""Eager dispatch in the state machine (flow.sm_supervisors.assign_eagerly).

A start or a completion that names a supervisor (`eager`, set by the leader from credit it
put aside) assigns what that command queued to the supervisor in the same command. It
must give the same history as queue-and-assign, take only from queues that supervisor
serves, and never be repeated by a retried request (the
assignment is an effect; the dedup table keeps only the answer).
"""

from __future__ import annotations

from test_execution_sm import T0, Sim, inc  # noqa: F401  (the scripted leader and worker)

from coda.flow import commands, model
from coda.flow.dispatches import dispatch_of
from coda.storage import codec, keys


def eager(sid="s1", items=1) -> dict:
    return {"supervisor_id": sid, "items": items}


def start(sim, wid, request_id=None, eager_to=None):
    data = commands.start_workflow(
        request_id=request_id or f"start-{wid}", time_ms=sim.time_ms, workflow_id=wid,
        workflow_type="twice", input_payload=codec.pack({"n": 1}), run_id=f"run-{wid}",
        reuse_policy=model.ALLOW_DUPLICATE, allow_undeclared_type=False, eager=eager_to)
    sim.index += 1
    result = sim.applier.apply(sim.index, data)
    sim.applier.commit()
    return result


def complete(sim, item, outcome, request_id, eager_to):
    sim.index += 1
    result = sim.applier.apply(sim.index, commands.complete(
        time_ms=sim.time_ms, request_id=request_id, workflow_id=item["workflow_id"],
        run_id=item["run_id"], key=item["key"], attempt=item["attempt"], outcome=outcome,
        eager=eager_to))
    sim.applier.commit()
    return result


def assigned_of(result) -> list[dict]:
    return [item for _, _, items in result.get("effects", {}).get("assigned", ())
            for item in items]


def with_dispatch(sim, items):
    return [dict(i, dispatch=sim.read(lambda txn, i=i: dispatch_of(txn, i))) for i in items]


def test_a_workflow_runs_eagerly_start_to_end_with_the_same_history(tmp_path):
    sim = Sim(tmp_path / "shard")
    sim.register()
    result = start(sim, "w1", eager_to=eager())
    (wft,) = with_dispatch(sim, assigned_of(result))
    assert wft["kind"] == "wft" and sim.queued() == []
    n = 0
    items = [wft]
    while items:
        item = items.pop()
        n += 1
        if item["kind"] == "wft":
            outcome = {"commands": sim.run_workflow_task(item)}
        else:
            outcome = {"result": codec.pack(inc(**codec.unpack(item["dispatch"].input)))}
        result = complete(sim, item, outcome, f"c-{n}", eager(items=4))
        assert "error" not in result, result
        items += with_dispatch(sim, assigned_of(result))
        assert sim.queued() == [], "everything went to s1 without an assign"
    record = sim.record("w1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3
    assert n == 5  # 3 workflow tasks and 2 tasks, no assign command among them
    assert [e["type"] for e in sim.history("w1")] == [
        "WorkflowExecutionStarted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted"]
    assert sim.read(lambda txn: list(txn.scan(keys.ASSIGNMENTS))) == []
    sim.store.close()


def test_a_retried_request_does_not_assign_or_dispatch_again(tmp_path):
    sim = Sim(tmp_path / "shard")
    sim.register()
    first = start(sim, "w1", request_id="r1", eager_to=eager())
    assert len(assigned_of(first)) == 1
    again = start(sim, "w1", request_id="r1", eager_to=eager())
    assert again["ok"] == first["ok"] and assigned_of(again) == []
    assert len(sim.read(lambda txn: list(txn.scan(keys.ASSIGNMENTS)))) == 1
    sim.store.close()


def test_only_from_queues_the_named_supervisor_serves(tmp_path):
    sim = Sim(tmp_path / "shard")
    sim.register()
    sim.apply(commands.register_supervisor(time_ms=T0, supervisor_id="tasks-only", build_id="",
                                           workflow_types=[], task_types=["inc"], running=[]))
    result = start(sim, "w1", eager_to=eager("tasks-only"))
    assert "error" not in result and assigned_of(result) == []
    assert len(sim.queued()) == 1  # the workflow task waits for a supervisor that runs it
    unknown = start(sim, "w2", eager_to=eager("gone"))
    assert "error" not in unknown and assigned_of(unknown) == []
    assert len(sim.queued()) == 2
    sim.store.close()


def test_a_malformed_eager_is_refused_and_changes_nothing(tmp_path):
    sim = Sim(tmp_path / "shard")
    sim.register()
    for bad in ({"supervisor_id": "s1", "items": 0}, {"supervisor_id": "s1", "items": 10**6},
                {"supervisor_id": "s1"}, {"items": 1}, "s1"):
        result = start(sim, "w1", request_id=f"r-{bad!r}", eager_to=bad)
        assert result["error"]["code"] == "INVALID_ARGUMENT", (bad, result)
    assert sim.record("w1") is None and sim.queued() == []
    sim.store.close()
