"""The worker's side of #5, in process: a cached (sticky) run is reused only if what it
emitted last time was committed, and a workflow task waiting on a read is suspended and
resumed with the answer."""

import coda
from coda.client.sdk import definition_of
from coda.storage import codec
from coda.supervisor.worker import Registry, Suspended, WorkflowTasks
from coda.supervisor.worker_reads import WorkerReads


@coda.workflow(name="stateful")
async def stateful():
    coda.context.set_state("stage", "waiting")
    got = await coda.context.wait_signal("go")
    rate = await coda.context.get_broadcast("rate")
    return [got, rate]


def tasks_with(sent):
    registry = Registry("m", {"stateful": definition_of(stateful)}, {})
    return WorkflowTasks(registry, 1 << 20, reads=WorkerReads(sent.append))


def event(n, kind, **fields):
    return dict(fields, type=kind, event_id=n, time_ms=1000 + n)


def msg(item_id, history):
    return {"op": "workflow_task", "id": item_id, "workflow_type": "stateful",
            "workflow_id": "w", "run_id": "r", "workflow_attempt": 1, "start_time_ms": 1000,
            "input": codec.pack({}), "history": history}


STARTED = event(1, "WorkflowExecutionStarted", workflow_type="stateful")


def test_a_cached_run_whose_state_set_did_not_commit_is_replayed():
    sent = []
    wft = tasks_with(sent)
    first = wft.handle(msg("1", [STARTED]))
    assert [c["type"] for c in first["commands"]] == ["SetState"] and not first["cached"]
    # The completion was lost: the next history has no StateSet, only a signal.
    lost = [STARTED, event(2, "SignalReceived", name="go", payload=codec.pack(1),
                           signal_id=1)]
    again = wft.handle(msg("2", lost))
    assert isinstance(again, Suspended)  # it got to the broadcast read ...
    assert again.cached is False         # ... by replay, which emits the SetState again
    assert [c["type"] for c in again.commands] == ["SetState"]


def test_a_read_the_worker_cache_cannot_serve_suspends_the_workflow_task():
    sent = []
    wft = tasks_with(sent)
    wft.handle(msg("1", [STARTED]))
    history = [STARTED,
               event(2, "WorkflowTaskCompleted", seen_event_id=1),
               event(3, "StateSet", key="stage", value=codec.pack("waiting")),
               event(4, "SignalReceived", name="go", payload=codec.pack("now"), signal_id=1)]
    outcome = wft.handle(msg("2", history))
    assert isinstance(outcome, Suspended) and outcome.cached  # sticky, waiting for a read
    [read] = outcome.live.run.pending_reads
    assert (read.kind, read.params) == ("broadcast", {"name": "rate"})
    done = wft.resume(outcome, [{"found": True, "version": 4, "value": codec.pack(1.5)}])
    assert [c["type"] for c in done["commands"]] == ["RecordRead", "CompleteWorkflow"]
    assert codec.unpack(done["commands"][-1]["result"]) == ["now", 1.5]
    # A worker cache that has it serves the next run at once.
    wft.reads.on_broadcast({"op": "broadcast", "name": "rate", "version": 4, "found": True,
                            "value": codec.pack(2.5)})
    fresh = tasks_with(sent)
    fresh.reads = wft.reads
    direct = fresh.handle(dict(msg("3", history), run_id="r2"))
    assert not isinstance(direct, Suspended)
    assert codec.unpack(direct["commands"][-1]["result"]) == ["now", 2.5]
    assert wft.reads.hits == 1
