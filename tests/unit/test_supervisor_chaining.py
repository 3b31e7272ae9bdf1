"""The supervisor's side of chained workflow tasks (coda.supervisor.chaining): when it
may run the workflow task a task's result wakes, and on what history."""

from coda.api import flow_pb2 as pb
from coda.storage import codec
from coda.supervisor.chaining import Chains, attach
from coda.supervisor.history_cache import HistoryCache

STARTED = {"type": "WorkflowExecutionStarted", "event_id": 1, "time_ms": 10,
           "input": codec.pack({"n": 1})}


def wft_dispatch(history):
    return pb.Dispatch(workflow_id="w", run_id="r", type_name="twice", attempt=1,
                       workflow_attempt=2, start_time_ms=10, history=codec.pack(history))


def task_dispatch(after, tail, key="k1"):
    return pb.Dispatch(workflow_id="w", run_id="r", task_key=key, type_name="inc", attempt=1,
                       history=codec.pack(tail), history_after_event_id=after)


def result_of(key="k1", attempt=1, value=2):
    return pb.Completion(request_id="q", workflow_id="w", run_id="r", task_key=key,
                         attempt=attempt, result=codec.pack(value))


def chains_after_dispatches():
    histories = HistoryCache()
    chains = Chains(histories)
    chains.note_workflow_task(wft_dispatch([STARTED]))
    histories.put(("w", "r"), [STARTED])
    tail = [{"type": "WorkflowTaskCompleted", "event_id": 2, "time_ms": 11, "seen_event_id": 1},
            {"type": "TaskScheduled", "event_id": 3, "time_ms": 11, "key": "k1", "task": "inc"},
            {"type": "TaskStarted", "event_id": 4, "time_ms": 11, "key": "k1", "attempt": 1}]
    chains.note_task(task_dispatch(1, tail), tail)
    return chains


def test_the_chained_workflow_task_runs_on_the_history_plus_the_expected_result():
    chains = chains_after_dispatches()
    message, chain = chains.message_for("c1", "t1", result_of(), now_ms=5000)
    history = message["history"]
    assert [e["event_id"] for e in history] == [1, 2, 3, 4, 5]
    assert history[-1] == {"type": "TaskCompleted", "key": "k1", "result": codec.pack(2),
                           "attempt": 1, "event_id": 5, "time_ms": 5000}
    assert (message["op"], message["id"], message["workflow_type"], message["workflow_attempt"],
            message["start_time_ms"], message["input"]) == (
        "workflow_task", "c1", "twice", 2, 10, STARTED["input"])
    assert (chain.item_id, chain.seen_event_id, chain.completed_time_ms,
            chain.workflow_attempt) == ("t1", 5, 5000, 2)


def test_the_expected_result_is_never_stamped_before_the_tasks_start():
    chains = chains_after_dispatches()   # TaskStarted at 11 ms (the leader's clock)
    message, chain = chains.message_for("c1", "t1", result_of(), now_ms=3)
    assert message["history"][-1]["time_ms"] == chain.completed_time_ms == 11


def test_no_chain_unless_the_cache_ends_at_this_very_task_attempts_start():
    chains = chains_after_dispatches()
    assert chains.message_for("c", "t1", result_of(key="k2")) is None
    assert chains.message_for("c", "t1", result_of(attempt=2)) is None
    failed = pb.Completion(request_id="q", workflow_id="w", run_id="r", task_key="k1",
                           attempt=1, failure=pb.Failure(error_type="E"))
    assert chains.message_for("c", "t1", failed) is None
    # A run whose workflow task this supervisor never ran: nothing known of it.
    other = result_of()
    other.run_id = "r2"
    assert chains.message_for("c", "t1", other) is None


def test_a_task_dispatch_the_cache_cannot_extend_leaves_no_chain():
    histories = HistoryCache()
    chains = Chains(histories)
    chains.note_workflow_task(wft_dispatch([STARTED]))
    tail = [{"type": "TaskStarted", "event_id": 9, "time_ms": 11, "key": "k1", "attempt": 1}]
    chains.note_task(task_dispatch(8, tail), tail)   # events 2-8 were never seen here
    assert histories.peek(("w", "r")) is None
    assert chains.message_for("c", "t1", result_of()) is None


def test_attach_refuses_what_would_not_fit_one_completion():
    chains = chains_after_dispatches()
    _, chain = chains.message_for("c1", "t1", result_of())
    completion = result_of()
    assert not attach(completion, chain, b"x" * 2000, bytes_max=1000)
    assert not completion.HasField("then_workflow_task")
    assert attach(completion, chain, codec.pack([]), bytes_max=1000)
    chained = completion.then_workflow_task
    assert (chained.seen_event_id, chained.workflow_attempt) == (5, 2)
