"""Chained workflow tasks in the shard state machine (sm_supervisors.chained_wft_refusal):
a task's result sent with the workflow task its supervisor ran on it commits both in
one command only if the history is what that workflow task saw; otherwise the result
alone commits and the workflow task goes the usual way, to the same outcome.

Driven like test_execution_sm (real LMDB, the real workflow runtime as the worker), and
so also through the write-set twin (conftest).
"""

from __future__ import annotations

import pytest

from coda.client.workflow_runtime import RunInfo, WorkflowRun
from coda.flow import commands, model
from coda.storage import codec, keys
from test_execution_sm import Sim, WORKFLOWS, inc  # noqa: F401  (Sim: the conftest's twin runs)

SUPERVISOR_MS = 400  # the supervisor's clock, this far behind the leader's


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def task_item(sim, wid):
    """Run the workflow task queued for wid; return the task it spawns, assigned."""
    (wft,) = sim.assign()
    sim.complete(wft, {"commands": sim.run_workflow_task(wft)})
    (task,) = sim.assign()
    assert task["kind"] == "task" and task["workflow_id"] == wid
    return task


def chained_run(sim, wid, task, result: bytes, time_ms: int) -> tuple[int, list]:
    """What the supervisor does: the workflow task on its history plus the TaskCompleted
    it expects Flow to record. Returns (that event's id, the commands)."""
    history = sim.history(wid)
    event = {"type": "TaskCompleted", "key": task["key"], "result": result,
             "attempt": task["attempt"], "event_id": history[-1]["event_id"] + 1,
             "time_ms": time_ms}
    record = sim.record(wid)
    run = WorkflowRun(WORKFLOWS[record["workflow_type"]], codec.unpack(history[0]["input"]),
                      RunInfo(wid, record["run_id"], record["start_time_ms"], record["attempt"]))
    decoded = [dict(e, result=codec.unpack(e["result"])) if e["type"] == "TaskCompleted" else e
               for e in history + [event]]
    out = []
    for command in run.advance(decoded):
        if command["type"] == "CompleteWorkflow":
            command = dict(command, result=codec.pack(command["result"]))
        out.append(command)
    return event["event_id"], out


def complete_chained(sim, task, result: bytes, seen_event_id: int, time_ms: int, wf_commands,
                     supervisor_id="s1", workflow_attempt=1) -> dict:
    return sim.complete(task, {"result": result, "then_workflow_task": {
        "seen_event_id": seen_event_id, "completed_time_ms": time_ms,
        "workflow_attempt": workflow_attempt, "supervisor_id": supervisor_id,
        "commands": wf_commands}})


def test_a_chained_workflow_task_commits_with_the_result_as_one_step(sim):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(inc(n=1))
    supervisor_ms = sim.time_ms - SUPERVISOR_MS
    seen, wf_commands = chained_run(sim, "w1", task, result, supervisor_ms)
    assert [c["type"] for c in wf_commands] == ["ScheduleTask"]

    assert complete_chained(sim, task, result, seen, supervisor_ms, wf_commands) == {
        "accepted": True, "chained": "accepted"}
    history = sim.history("w1")
    done, marker, scheduled = history[seen - 1:seen + 2]
    assert (done["type"], done["event_id"], done["time_ms"]) == ("TaskCompleted", seen, supervisor_ms)
    assert (marker["type"], marker["seen_event_id"]) == ("WorkflowTaskCompleted", seen)
    assert scheduled["type"] == "TaskScheduled" and marker["time_ms"] == sim.time_ms
    # No workflow task queued or assigned: only the second task waits.
    queued = sim.queued()
    assert len(queued) == 1 and queued[0][0] == keys.task_queue_name("inc")
    assert sim.record("w1")["wft"] is None
    assert sim.read(lambda txn: [k for k, _ in txn.scan(keys.ASSIGNMENTS)]) == []

    while sim.step():
        pass
    record = sim.record("w1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3
    # The same history an unchained run records (test_execution_sm), event for event.
    assert [e["type"] for e in sim.history("w1")] == [
        "WorkflowExecutionStarted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted"]


def test_a_chain_that_completes_the_workflow_closes_it_in_the_same_command(sim):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    sim.complete(task, {"result": codec.pack(2)})
    while len(sim.queued()) and sim.queued()[0][0] != keys.task_queue_name("inc"):
        (wft,) = sim.assign()
        sim.complete(wft, {"commands": sim.run_workflow_task(wft)})
    (second,) = sim.assign()
    seen, wf_commands = chained_run(sim, "w1", second, codec.pack(3), sim.time_ms)
    assert [c["type"] for c in wf_commands] == ["CompleteWorkflow"]
    assert complete_chained(sim, second, codec.pack(3), seen, sim.time_ms, wf_commands)[
        "chained"] == "accepted"
    record = sim.record("w1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3
    assert sim.queued() == [] and sim.effects[-1].get("closed") == ["w1"]


def _refused_then_finished(sim, task, result, seen, time_ms, wf_commands, why, **kwargs):
    answer = complete_chained(sim, task, result, seen, time_ms, wf_commands, **kwargs)
    assert answer["accepted"] is True and answer["chained"] == why
    history = sim.history(task["workflow_id"])
    done = [e for e in history if e["type"] == "TaskCompleted"][-1]
    assert done["time_ms"] == sim.time_ms    # the leader's stamp, not the supervisor's
    assert sim.record(task["workflow_id"])["wft"]["state"] == "queued"
    while sim.step():
        pass
    record = sim.record(task["workflow_id"])
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3


def test_refused_when_the_history_moved_on_after_the_supervisor_saw_it(sim):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms)
    sim.apply(commands.signal_workflow(request_id="sig-1", time_ms=sim.time_ms,
                                       workflow_id="w1", run_id=None, name="poke",
                                       payload=codec.pack(None)))
    _refused_then_finished(sim, task, result, seen, sim.time_ms, wf_commands,
                           "the run has a workflow task pending")


def test_refused_when_its_event_id_is_not_the_next_one(sim):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms)
    _refused_then_finished(sim, task, result, seen - 1, sim.time_ms, wf_commands,
                           "the history moved on")


def test_refused_when_it_ran_as_another_workflow_attempt(sim):
    """Its code may have branched on the attempt (it seeds the run's random numbers)."""
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms)
    _refused_then_finished(sim, task, result, seen, sim.time_ms, wf_commands,
                           "another workflow attempt", workflow_attempt=2)


@pytest.mark.parametrize("skew_ms", [-1001, 1001])
def test_refused_when_the_supervisors_clock_is_too_far_off(sim, skew_ms):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms + skew_ms)
    _refused_then_finished(sim, task, result, seen, sim.time_ms + skew_ms, wf_commands,
                           "clock skew")


def test_refused_for_a_supervisor_that_does_not_take_the_runs_workflow_tasks(sim):
    sim.apply(commands.register_supervisor(
        time_ms=sim.time_ms, supervisor_id="tasks-only", build_id="b", workflow_types=[],
        task_types=["inc"], running=[]))
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms)
    _refused_then_finished(sim, task, result, seen, sim.time_ms, wf_commands,
                           "the supervisor does not take this run's workflow tasks",
                           supervisor_id="tasks-only")


@pytest.mark.parametrize("bad", [
    {"seen_event_id": "7"}, {"completed_time_ms": 1.5}, {"commands": {"type": "x"}},
    {"supervisor_id": None}, {"workflow_attempt": True}])
def test_a_malformed_chain_is_refused_and_the_result_still_counts(sim, bad):
    sim.start("w1", "twice", {"n": 1})
    task = task_item(sim, "w1")
    result = codec.pack(2)
    seen, wf_commands = chained_run(sim, "w1", task, result, sim.time_ms)
    chained = dict({"seen_event_id": seen, "completed_time_ms": sim.time_ms,
                    "workflow_attempt": 1, "supervisor_id": "s1", "commands": wf_commands},
                   **bad)
    answer = sim.complete(task, {"result": result, "then_workflow_task": chained})
    assert answer == {"accepted": True, "chained": "malformed"}
    while sim.step():
        pass
    assert codec.unpack(sim.record("w1")["result"]) == 3


def test_a_tasks_dispatch_brings_its_run_news_to_a_session_that_holds_the_history(sim):
    from coda.flow.dispatcher import Session, _with_run_history
    from coda.flow.dispatches import dispatch_of
    sim.start("w1", "twice", {"n": 1})
    session = Session("s1", ("q",), credit=10)
    session.history_sent[("w1", "run-w1")] = 1     # it ran w1's first workflow task on [1]
    task = task_item(sim, "w1")

    def dispatched(item, budget_bytes=1 << 20):
        return sim.read(lambda txn: _with_run_history(
            txn, session, item, dispatch_of(txn, item), [budget_bytes]))

    d = dispatched(task)
    tail = codec.unpack(d.history)
    assert d.history_after_event_id == 1
    assert [e["type"] for e in tail] == ["WorkflowTaskCompleted", "TaskScheduled", "TaskStarted"]
    assert tail[-1]["key"] == task["key"]
    assert session.history_sent[("w1", "run-w1")] == tail[-1]["event_id"]
    assert dispatched(task).history == b""          # nothing new since: nothing sent
    # Over the message's budget, or for a session that never ran the run: none.
    session.history_sent[("w1", "run-w1")] = 1
    assert dispatched(task, budget_bytes=10).history == b""
    del session.history_sent[("w1", "run-w1")]
    assert dispatched(task).history == b""


def test_a_task_with_a_heartbeat_timeout_gets_no_run_news(sim):
    from coda.flow.dispatcher import Session, _with_run_history
    from coda.flow.dispatches import dispatch_of
    sim.start("w1", "twice", {"n": 1})
    (wft,) = sim.assign()
    wf_commands = sim.run_workflow_task(wft)
    wf_commands[0]["options"] = dict(wf_commands[0].get("options") or {}, heartbeat_timeout_s=5)
    sim.complete(wft, {"commands": wf_commands})
    (task,) = sim.assign()
    session = Session("s1", ("q",), credit=10)
    session.history_sent[("w1", "run-w1")] = 1
    d = sim.read(lambda txn: _with_run_history(txn, session, task, dispatch_of(txn, task),
                                               [1 << 20]))
    assert d.heartbeat_timeout_ms == 5000 and d.history == b""
