"""The worker's sticky run cache and chained workflow tasks (coda.supervisor.chaining): a
run advanced on the supervisor's own TaskCompleted stays live only if Flow recorded that
very event; recorded otherwise (a refused chain: the leader's time, or another event in
its place), the next workflow task replays, and now() follows what was recorded."""

import coda
from coda.client.sdk import definition_of
from coda.storage import codec
from coda.supervisor.worker import Registry, WorkflowTasks


@coda.workflow(name="stepper")
async def stepper():
    a = await coda.context.spawn_task("t", args={})
    seen_s = coda.context.now().timestamp()
    b = await coda.context.spawn_task("t", args={})
    return [a, b, seen_s]


def tasks():
    return WorkflowTasks(Registry("m", {"stepper": definition_of(stepper)}, {}), 1 << 20)


def event(n, kind, time_ms=None, **fields):
    return dict(fields, type=kind, event_id=n, time_ms=1000 + n if time_ms is None else time_ms)


def msg(item_id, history):
    return {"op": "workflow_task", "id": item_id, "workflow_type": "stepper",
            "workflow_id": "w", "run_id": "r", "workflow_attempt": 1, "start_time_ms": 1000,
            "input": codec.pack({}), "history": history}


def first_step(wft):
    started = event(1, "WorkflowExecutionStarted", workflow_type="stepper")
    (schedule,) = wft.handle(msg("1", [started]))["commands"]
    key = schedule["key"]
    return [started, event(2, "WorkflowTaskCompleted", seen_event_id=1),
            event(3, "TaskScheduled", key=key, task="t"),
            event(4, "TaskStarted", key=key, attempt=1)], key


def completed(n, key, time_ms, value):
    return event(n, "TaskCompleted", time_ms, key=key, result=codec.pack(value), attempt=1)


def test_a_chain_flow_recorded_as_sent_keeps_the_run_live():
    wft = tasks()
    history, key = first_step(wft)
    chained = wft.handle(msg("2", history + [completed(5, key, 50_000, "a")]))
    assert chained["cached"] and [c["type"] for c in chained["commands"]] == ["ScheduleTask"]
    second = chained["commands"][0]["key"]
    recorded = history + [completed(5, key, 50_000, "a"),
                          event(6, "WorkflowTaskCompleted", seen_event_id=5),
                          event(7, "TaskScheduled", key=second, task="t"),
                          event(8, "TaskStarted", key=second, attempt=1),
                          completed(9, second, 60_000, "b")]
    done = wft.handle(msg("3", recorded))
    assert done["cached"]
    assert codec.unpack(done["commands"][-1]["result"]) == ["a", "b", 50.0]


def test_a_refused_chain_replays_on_what_flow_recorded():
    wft = tasks()
    history, key = first_step(wft)
    wft.handle(msg("2", history + [completed(5, key, 50_000, "a")]))  # the chain, refused
    # Flow stamped the result itself (same id, later time) and sent a workflow task.
    recorded = history + [completed(5, key, 51_234, "a")]
    again = wft.handle(msg("3", recorded))
    assert not again["cached"]                       # replayed, not the chained run
    (schedule,) = again["commands"]
    recorded += [event(6, "WorkflowTaskCompleted", seen_event_id=5),
                 event(7, "TaskScheduled", key=schedule["key"], task="t"),
                 event(8, "TaskStarted", key=schedule["key"], attempt=1),
                 completed(9, schedule["key"], 60_000, "b")]
    done = wft.handle(msg("4", recorded))
    assert done["cached"]
    assert codec.unpack(done["commands"][-1]["result"]) == ["a", "b", 51.234]


def test_a_chain_whose_event_id_flow_gave_to_another_event_replays():
    wft = tasks()
    history, key = first_step(wft)
    wft.handle(msg("2", history + [completed(5, key, 50_000, "a")]))
    recorded = history + [event(5, "SignalReceived", name="poke", payload=codec.pack(None),
                                signal_id=1),
                          completed(6, key, 52_000, "a")]
    again = wft.handle(msg("3", recorded))
    assert not again["cached"] and [c["type"] for c in again["commands"]] == ["ScheduleTask"]
