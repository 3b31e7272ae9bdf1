"""Durable execution end to end: real `coda-flow serve` nodes, a real supervisor, real workers.

One three-node cluster (2 shards, a 3 s supervisor lease, a 64 KiB payload limit) and one
supervisor (`coda supervisor run exec_flows --workers 2`) are shared by the module. The
supervisor's module is written to a tmp dir: it imports the examples' workflows and tasks
(examples/process_event.py, saga.py, weekly_email.py) and adds test workflows and tasks
named `x_*`. Tasks record every execution as one line (one O_APPEND write) in a file
named by an environment variable, so "a task ran twice" is judged outside the engine.

The non-determinism, lost-supervisor and schedule-to-start tests run supervisors of their
own (a module whose code changes between attempts, a supervisor the test kills, a task
type nobody serves).

What is checked (each could fail):
1. the examples complete: process_event, book_trip (the saga compensates), weekly_email
   (its random 1/0 is retried by replay; completed tasks are not run again);
2. changed code between attempts gives a NonDeterminismError naming both sides, and the
   fixed code then completes the run without re-running completed tasks;
3. cancel delivers CancelledError at the workflow's await (it compensates, ends
   CANCELLED); terminate closes at once and no workflow code runs afterwards;
4. task retries follow the policy's backoff (history timestamps); non-retryable errors
   fail at once; a last attempt lost with its (killed) supervisor fails the task and the
   workflow sees it;
5. timeouts fire: start-to-close, heartbeat, schedule-to-start, workflow execution;
6. bad input fails clearly: unknown workflow type, unknown task type, unencodable task
   args, oversized task args / task results / workflow results, unencodable workflow
   args (over the cluster's limit, which Flow enforces on a workflow task's commands, and
   over the worker's).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from coda import errors
from coda.client.client import SyncClient
from coda.errors import NotFound, PayloadError
from exec_helpers import LOG_ENV, RECORDER, read_records, wait_for, write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

LEASE_MS = 3000
PAYLOAD_BYTES_MAX = 64 * 1024
RESULT_TIMEOUT_S = 60.0


FLOWS = RECORDER + '''
import asyncio
import os

import coda
from coda.client.task_context import heartbeat

# The examples, served by this supervisor too.
from examples.process_event import normalize_event, store_event, process_event
from examples.saga import book_flight, book_hotel, book_car, cancel, book_trip
from examples.weekly_email import get_all_orgs, send_weekly_email, weekly_email

ORGS = ["acme", "globex", "initech", "umbrella"]


@coda.workflow(name="x_sleeper")
async def x_sleeper(seconds):
    before = coda.context.now()
    await coda.context.sleep(seconds)
    return (coda.context.now() - before).total_seconds()


# --- the weekly email again, with tasks that count their executions --------------------------

@coda.task(name="x_get_orgs")
def x_get_orgs():
    record("x_get_orgs")
    return list(ORGS)


@coda.task(name="x_send_email", retry=coda.RetryPolicy(maximum_attempts=3))
async def x_send_email(org):
    record("x_send_email", org=org)
    return f"sent to {org}"


@coda.workflow(name="x_weekly_email", retry=coda.RetryPolicy(
    maximum_attempts=100, initial_interval=0.1, maximum_interval=0.3))
async def x_weekly_email(failure_rate: float = 0.5):
    orgs = await coda.context.spawn_task(x_get_orgs, cache_key=["orgs"])
    if coda.context.random() < failure_rate:
        1 / 0  # before the emails: the next attempt replays the orgs
    sent = await coda.context.await_all([
        coda.context.spawn_task(x_send_email, args={"org": org}, cache_key=[org])
        for org in orgs])
    if coda.context.random() < failure_rate:
        1 / 0  # after the emails: the next attempt replays them all
    return sent


# --- cancel and terminate --------------------------------------------------------------------

@coda.task(name="x_long")
async def x_long(seconds):
    record("x_long_started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record("x_long_cancelled")
        raise
    return "slept"


@coda.task(name="x_compensate")
def x_compensate(what, seconds=0.0):
    record("x_compensate", what=what)
    time.sleep(seconds)
    return f"compensated {what}"


@coda.workflow(name="x_cancellable", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_cancellable(seconds, compensate_s=0.0):
    try:
        return await coda.context.spawn_task(x_long, args={"seconds": seconds})
    except asyncio.CancelledError:
        await coda.context.spawn_task(x_compensate, args={"what": "x_long",
                                                          "seconds": compensate_s})
        raise


@coda.workflow(name="x_terminable", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_terminable(seconds):
    try:
        await coda.context.spawn_task(x_long, args={"seconds": seconds})
    except asyncio.CancelledError:
        await coda.context.spawn_task(x_compensate, args={"what": "cancelled"})
        raise
    except coda.TaskFailedError:
        await coda.context.spawn_task(x_compensate, args={"what": "task failed"})
        raise
    return await coda.context.spawn_task(x_compensate, args={"what": "after"})


# --- retries and timeouts ---------------------------------------------------------------------

class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


@coda.task(name="x_flaky", retry=coda.RetryPolicy(initial_interval=0.2, backoff_coefficient=2,
                                                  maximum_attempts=5))
def x_flaky(fail_times):
    info = record("x_flaky")
    if info.attempt <= fail_times:
        raise Flaky(f"attempt {info.attempt} fails")
    return info.attempt


@coda.task(name="x_fatal", retry=coda.RetryPolicy(initial_interval=0.1, maximum_attempts=5,
                                                  non_retryable_errors=["Fatal"]))
def x_fatal():
    record("x_fatal")
    raise Fatal("no point in trying again")


@coda.task(name="x_slow", start_to_close_timeout=1,
           retry=coda.RetryPolicy(initial_interval=0.1, maximum_attempts=2))
async def x_slow(seconds):
    record("x_slow")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        record("x_slow_cancelled")
        raise
    return "finished"


@coda.task(name="x_beats", heartbeat_timeout=3, retry=coda.RetryPolicy(maximum_attempts=1))
async def x_beats(beat_s, then_s):
    record("x_beats")
    end = time.monotonic() + beat_s
    while time.monotonic() < end:
        heartbeat({"t": time.time()})
        await asyncio.sleep(0.2)
    try:
        await asyncio.sleep(then_s)  # silent from here on
    except asyncio.CancelledError:
        record("x_beats_cancelled")
        raise
    return "finished"


@coda.task(name="x_big", retry=coda.RetryPolicy(initial_interval=0.1, maximum_attempts=5))
def x_big(size):
    record("x_big", size=size)
    return "x" * size


@coda.task(name="x_echo")
def x_echo(value):
    record("x_echo")
    return value


@coda.task(name="x_poke_own_workflow")
async def x_poke_own_workflow(n):
    """Signals its own workflow before it returns: news the chained workflow task that
    its result would carry did not see."""
    info = record("x_poke_own_workflow")
    async with coda.Client(os.environ["CODA_ADDRESS"]) as client:
        await client.signal_workflow(info.workflow_id, "poke", n)
    return n + 1


@coda.workflow(name="x_waits_for_poke")
async def x_waits_for_poke():
    return await coda.context.wait_signal("poke")


@coda.workflow(name="x_poked_steps")
async def x_poked_steps(n):
    first = await coda.context.spawn_task("x_poke_own_workflow", args={"n": n})
    poke = await coda.context.wait_signal("poke")
    second = await coda.context.spawn_task("x_echo", args={"value": first + poke})
    return [first, poke, second]


def _hidden():
    # Not at the module's top level: this supervisor does not declare it (another does).
    @coda.task(name="x_starved", schedule_to_start_timeout=1,
               retry=coda.RetryPolicy(maximum_attempts=3))
    def x_starved():
        return "ran"
    return x_starved


TASKS = {"x_flaky": x_flaky, "x_fatal": x_fatal, "x_slow": x_slow, "x_beats": x_beats,
         "x_big": x_big, "x_long": x_long, "x_echo": x_echo, "x_starved": _hidden()}


@coda.workflow(name="x_call", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_call(task, args=None):
    """Run one task (by its definition when this module has one, else by name)."""
    try:
        return {"ok": await coda.context.spawn_task(TASKS.get(task, task), args=args or {})}
    except coda.TaskFailedError as failure:
        return {"error_type": failure.error_type, "message": str(failure)}


@coda.workflow(name="x_bad_args", retry=coda.RetryPolicy(initial_interval=0.1))  # unlimited
async def x_bad_args(catch=False):
    try:
        return await coda.context.spawn_task(x_echo, args={"value": {1, 2, 3}})  # a set
    except coda.errors.PayloadError as exc:
        if not catch:
            raise
        # Refused at the call: the workflow goes on (and the next spawn works).
        return {"refused": str(exc),
                "then": await coda.context.spawn_task(x_echo, args={"value": [1, 2, 3]})}


@coda.workflow(name="x_big_args", retry=coda.RetryPolicy(initial_interval=0.1))  # unlimited
async def x_big_args(size):
    value = await coda.context.spawn_task(x_echo, args={"value": "x" * size})
    return len(value)


@coda.workflow(name="x_big_result", retry=coda.RetryPolicy(initial_interval=0.1))  # unlimited
async def x_big_result(size):
    return "x" * size
'''

# The same workflow type in three versions of one module (one supervisor each).
ND_V1 = RECORDER + '''
import coda


@coda.task(name="x_nd_a")
def x_nd_a():
    record("x_nd_a")
    return "a"


@coda.task(name="x_nd_b")
def x_nd_b():
    record("x_nd_b")
    return "b"


# Upgradable: each version's supervisor (a build of its own) takes the run over; a pinned
# type would wait for version 1's build instead (tests/integration/test_long_lived.py).
@coda.workflow(name="x_nd", retry=coda.RetryPolicy(initial_interval=0.5, maximum_interval=1.0),
               versioning="auto_upgrade")
async def x_nd():
    await coda.context.spawn_task(x_nd_a)
    raise RuntimeError("version 1 has a bug")
'''

ND_V2 = ND_V1.replace('''    await coda.context.spawn_task(x_nd_a)
    raise RuntimeError("version 1 has a bug")''', '''    return await coda.context.spawn_task(x_nd_b)  # another task at spawn #0''')

ND_V3 = ND_V1.replace('''    await coda.context.spawn_task(x_nd_a)
    raise RuntimeError("version 1 has a bug")''', '''    a = await coda.context.spawn_task(x_nd_a)
    return {"a": a, "fixed": True}''')

assert ND_V1 != ND_V2 != ND_V3 != ND_V1

# A task with one attempt, run by a supervisor the test kills.
LOST = RECORDER + '''
import asyncio

import coda


@coda.task(name="x_doomed", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_doomed():
    record("x_doomed")
    await asyncio.sleep(60)


@coda.workflow(name="x_lost", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_lost():
    try:
        return await coda.context.spawn_task(x_doomed)
    except coda.TaskFailedError as failure:
        return {"error_type": failure.error_type}
'''

BIG_HISTORY = RECORDER + '''
import coda


@coda.task(name="x_blob")
def x_blob(i):
    return "b" * 60_000


@coda.workflow(name="x_big_history")
async def x_big_history(n):
    sizes = []
    for i in range(n):
        sizes.append(len(await coda.context.spawn_task(x_blob, args={"i": i})))
    go = await coda.context.wait_signal("go")
    return [sum(sizes), go]
'''

STARVED_DECLARED = '''
import coda


@coda.task(name="x_starved")
def x_starved():
    return "ran"
'''


# --- helpers ---------------------------------------------------------------------------------



def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def of_type(history: list[dict], *types: str) -> list[dict]:
    return [e for e in history if e["type"] in types]


class Env:
    def __init__(self, root, cluster: Cluster, supervisor: SupervisorProcess, log_path: str):
        self.root = root
        self.cluster = cluster
        self.supervisor = supervisor
        self.log_path = log_path
        self.client = cluster.client(timeout_s=60.0)

    def records(self, wid: str | None = None, event: str | None = None) -> list[dict]:
        return [r for r in read_records(self.log_path)
                if (wid is None or r["wid"] == wid) and (event is None or r["event"] == event)]

    def start(self, workflow_type, args=None, **kwargs):
        wid = new_id(workflow_type)
        return self.client.start_workflow(workflow_type, args, workflow_id=wid, **kwargs)

    def run(self, workflow_type, args=None, **kwargs):
        """Start, wait for the result; (handle, result)."""
        handle = self.start(workflow_type, args, **kwargs)
        return handle, handle.result(timeout=RESULT_TIMEOUT_S)

    def supervisor_of(self, name: str, module: str, source: str, workers: int = 1):
        module_dir = write_module(self.root / name, module, source)
        return SupervisorProcess(self.cluster, module, root=str(self.root / f"{name}-run"),
                                 workers=workers, module_dir=module_dir,
                                 env={LOG_ENV: self.log_path})

    def alive(self) -> None:
        self.cluster.assert_alive()
        assert self.supervisor.proc.poll() is None, (
            f"the shared supervisor exited:\n{self.supervisor.read_log()[-3000:]}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("execution")
    cluster = Cluster(str(root / "cluster"), shards=2, supervisor_lease_ms=LEASE_MS,
                      payload_bytes_max=PAYLOAD_BYTES_MAX)
    supervisor = None
    env = None
    try:
        cluster.start()
        cluster.wait_leaders()
        log_path = str(root / "executions.jsonl")
        module_dir = write_module(root / "flows", "exec_flows", FLOWS)
        supervisor = SupervisorProcess(cluster, "exec_flows", root=str(root / "supervisor"),
                                       workers=2, module_dir=module_dir, env={LOG_ENV: log_path})
        supervisor.start()
        supervisor.wait_connected()
        env = Env(root, cluster, supervisor, log_path)
        yield env
    finally:
        try:
            if env is not None:
                env.client.close()
            if supervisor is not None:
                supervisor.close()
        finally:
            cluster.close()


@pytest.fixture(autouse=True)
def still_alive(env):
    yield
    env.alive()


# --- 1. the examples ---------------------------------------------------------------------------

def test_process_event_example(env):
    handle, result = env.run("process_event", {"project_id": "p1",
                                               "event_data": {"event_id": "E-1", "Kind": "Click"}})
    event = {"project_id": "p1", "event_id": "E-1", "kind": "Click"}
    assert result == {"event": event, "receipt": "stored E-1"}
    history = handle.history()
    assert [e["task"] for e in of_type(history, "TaskScheduled")] == ["normalize", "store_event"]
    assert len(of_type(history, "TaskStarted")) == 2  # each ran once
    assert history[-1]["type"] == "WorkflowExecutionCompleted"
    assert handle.describe()["status"] == "COMPLETED"


def test_an_idle_supervisor_gets_each_next_step_in_the_commit_that_queued_it(env):
    """Eager dispatch (flow.sm_supervisors.assign_eagerly): on an idle cluster the start
    assigns the first workflow task, each completion the step it queues, with no assign
    in between; the history and the once-only runs are as without it."""
    wid = new_id("eager")
    shard = env.cluster.shard_of(wid)
    leader = env.cluster.leader_node(shard)
    before = env.cluster.metric(leader, "coda_shard_eager_dispatched_total", shard=str(shard))
    chained_before = env.cluster.metric(leader, "coda_shard_chained_workflow_tasks_total",
                                        shard=str(shard), outcome="accepted")
    handle = env.client.start_workflow("process_event", {
        "project_id": "p1", "event_data": {"event_id": "E-2", "Kind": "Click"}}, workflow_id=wid)
    assert handle.result(timeout=RESULT_TIMEOUT_S)["receipt"] == "stored E-2"
    eager = env.cluster.metric(leader, "coda_shard_eager_dispatched_total",
                               shard=str(shard)) - before
    chained = env.cluster.metric(leader, "coda_shard_chained_workflow_tasks_total",
                                 shard=str(shard), outcome="accepted") - chained_before
    # 3 workflow tasks and 2 tasks, each either dispatched eagerly or (workflow tasks
    # after a task) chained with its result; the start's may go through the queue if
    # the supervisor's credit on that shard was down to its last slot.
    assert eager + chained >= 4, (eager, chained)
    history = handle.history()
    assert [e["type"] for e in history] == [
        "WorkflowExecutionStarted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted"]



def test_a_new_run_s_first_workflow_task_goes_out_before_its_start_commits(env):
    """Speculative dispatch (flow.speculation): on an idle shard the leader sends a new
    run's first workflow task as the start is appended; its completion, appended after
    the start, is accepted, and the run ends as it would otherwise."""
    wids = [new_id("early") for _ in range(5)]
    by_leader = {}
    for wid in wids:
        shard = env.cluster.shard_of(wid)
        by_leader.setdefault((env.cluster.leader_node(shard), shard), []).append(wid)

    def counted(name, **labels):
        return sum(env.cluster.metric(node, name, shard=str(shard), **labels)
                   for node, shard in by_leader)

    early_before = counted("coda_shard_dispatched_before_commit_total")
    rejected_before = counted("coda_shard_completions_total", outcome="rejected")
    for wid in wids:  # one after another: each start alone in its entry
        handle = env.client.start_workflow("process_event", {
            "project_id": "p1", "event_data": {"event_id": wid, "Kind": "Click"}},
            workflow_id=wid)
        assert handle.result(timeout=RESULT_TIMEOUT_S)["receipt"] == f"stored {wid}"
        history = handle.history()
        assert [e["task"] for e in of_type(history, "TaskScheduled")] == [
            "normalize", "store_event"]
        assert len(of_type(history, "TaskStarted")) == 2  # each ran once
    early = counted("coda_shard_dispatched_before_commit_total") - early_before
    # Each start's may go through the queue instead if the supervisor's credit on its
    # shard was down to its last slot (reserve_eager); not all five.
    assert 1 <= early <= len(wids), early
    assert counted("coda_shard_completions_total", outcome="rejected") == rejected_before

def test_a_tasks_result_and_the_workflow_task_it_wakes_commit_together(env):
    """Chained workflow tasks (coda.supervisor.chaining, sm_supervisors.chained_wft_refusal):
    the supervisor that ran a sequential workflow's last workflow task runs the next one
    on each task's result and sends both; the shard commits them as one step. The history
    and the once-only runs are those of the unchained path, and the recorded TaskCompleted
    times are what the workflow's now() saw."""
    wid = new_id("chain")
    shard = env.cluster.shard_of(wid)
    leader = env.cluster.leader_node(shard)

    def accepted() -> float:
        return env.cluster.metric(leader, "coda_shard_chained_workflow_tasks_total",
                                  shard=str(shard), outcome="accepted")

    before = accepted()
    handle = env.client.start_workflow("process_event", {
        "project_id": "p1", "event_data": {"event_id": "E-3", "Kind": "Click"}}, workflow_id=wid)
    assert handle.result(timeout=RESULT_TIMEOUT_S)["receipt"] == "stored E-3"
    # Both results chain on an idle cluster; one may miss its chain if its task's dispatch
    # went through the queue (no history on it) when credit was short.
    assert accepted() - before >= 1
    history = handle.history()
    assert [e["type"] for e in history] == [
        "WorkflowExecutionStarted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "TaskScheduled", "TaskStarted",
        "TaskCompleted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted"]
    assert [e["event_id"] for e in history] == list(range(1, len(history) + 1))
    for done, marker in zip(of_type(history, "TaskCompleted"),
                            of_type(history, "WorkflowTaskCompleted")[1:]):
        assert marker["seen_event_id"] == done["event_id"]
        assert abs(done["time_ms"] - marker["time_ms"]) < 1000


def test_news_a_chained_workflow_task_did_not_see_sends_the_result_alone(env):
    """The task signals its own workflow before returning, so the history has moved on
    when its result (and the workflow task the supervisor may have chained on it)
    arrives: the shard commits the result alone, or the supervisor saw the news first and
    did not chain. Either way the run sees the signal, each task runs once, and the
    history is what the unchained path writes."""
    wid = new_id("poked")
    handle = env.client.start_workflow("x_poked_steps", {"n": 1}, workflow_id=wid)
    assert handle.result(timeout=RESULT_TIMEOUT_S) == [2, 1, 3]
    runs = Counter(r["event"] for r in read_records(env.log_path) if r["wid"] == wid)
    assert runs == {"x_poke_own_workflow": 1, "x_echo": 1}
    history = handle.history()
    types = [e["type"] for e in history]
    assert types.index("SignalReceived") < types.index("TaskCompleted")
    assert [e["event_id"] for e in history] == list(range(1, len(history) + 1))
    assert types[-1] == "WorkflowExecutionCompleted"


def test_execute_workflow_starts_and_answers_the_result_in_one_call(env, monkeypatch):
    """StartWorkflow with wait_ms holds its answer until the run closes: execute_workflow
    gets the result without a WaitWorkflow call (any would fail here); a retry with the
    same request id gets the closed run at once and starts nothing."""
    def no_wait_calls(*args, **kwargs):
        raise AssertionError("execute_workflow called WaitWorkflow")

    monkeypatch.setattr(env.client._client, "wait_workflow", no_wait_calls)
    wid, request_id = new_id("execute"), uuid.uuid4().hex
    args = {"task": "x_echo", "args": {"value": "once"}}
    result = env.client.execute_workflow("x_call", args, workflow_id=wid,
                                         request_id=request_id, timeout=RESULT_TIMEOUT_S)
    assert result == {"ok": "once"}
    assert env.client.execute_workflow("x_call", args, workflow_id=wid,
                                       request_id=request_id) == result
    assert len(env.records(wid, "x_echo")) == 1  # ran once, retry included
    assert len(env.client.get_workflow_handle(wid).history()) > 0
    # A failure is raised as result() raises it.
    with pytest.raises(errors.WorkflowTimedOutError):
        env.client.execute_workflow("x_call", {"task": "x_long", "args": {"seconds": 60}},
                                    execution_timeout=1, timeout=RESULT_TIMEOUT_S)


def test_execute_workflow_of_a_run_that_outlasts_the_wait_goes_on_waiting(env):
    """The start's wait ends (here: 0.3 s) with the run still going: no `closed` in the
    answer, and the result comes by WaitWorkflow; execute_workflow's timeout raises
    WaitTimeout with the run still RUNNING, which a later result() can still collect."""
    wid = new_id("outlasts")
    client = env.client._client
    handle, closed = env.client._run(client._start_workflow("x_waits_for_poke", None,
                                                            workflow_id=wid, wait_ms=300))
    assert closed is None and handle.run_id
    env.client.get_workflow_handle(wid).signal("poke", "first")
    assert env.client.get_workflow_handle(wid, handle.run_id).result(timeout=RESULT_TIMEOUT_S) \
        == "first"
    wid2 = new_id("outlasts")
    with pytest.raises(errors.WaitTimeout):
        env.client.execute_workflow("x_waits_for_poke", workflow_id=wid2, timeout=0.5)
    env.client.get_workflow_handle(wid2).signal("poke", "second")
    assert env.client.get_workflow_handle(wid2).result(timeout=RESULT_TIMEOUT_S) == "second"


def test_a_start_that_waits_is_forwarded_by_a_node_that_does_not_lead(env):
    """Raw StartWorkflow(wait_ms) sent to a follower: forwarded to the shard's leader,
    held until the close, the closed run in the answer."""
    import grpc
    from coda.api import flow_pb2 as pb
    from coda.api import flow_pb2_grpc as pb_grpc
    from coda.storage import codec
    wid = new_id("forwarded")
    shard = env.cluster.shard_of(wid)
    follower = next(i for i in range(3) if i != env.cluster.leader_node(shard))
    with grpc.insecure_channel(env.cluster.nodes[follower]["client"]) as channel:
        answer = pb_grpc.FlowStub(channel).StartWorkflow(pb.StartWorkflowRequest(
            workflow_id=wid, workflow_type="x_call",
            input=codec.pack({"task": "x_echo", "args": {"value": 7}}),
            request_id=uuid.uuid4().hex, wait_ms=30_000), timeout=40)
    assert answer.HasField("closed") and answer.closed.run_id == answer.run_id
    assert answer.closed.status == "COMPLETED"
    assert codec.unpack(answer.closed.result) == {"ok": 7}


def test_a_durable_sleep_fires_on_time_and_once(env):
    started_s = time.monotonic()
    handle, slept_s = env.run("x_sleeper", {"seconds": 2})
    assert time.monotonic() - started_s >= 2.0
    assert 2.0 <= slept_s < 4.0  # the workflow's clock: the firing time, from history
    history = handle.history()
    [started] = of_type(history, "TimerStarted")
    [fired] = of_type(history, "TimerFired")
    assert fired["time_ms"] >= started["fire_at_ms"]  # never before its time
    assert fired["time_ms"] - started["fire_at_ms"] < 2000


def test_saga_example_compensates_a_trip_that_cannot_be_booked(env):
    handle, result = env.run("book_trip", {"trip": "peak-august"})
    assert result == {"failed": "SoldOut", "compensated": ["cancelled hotel-peak-august",
                                                           "cancelled flight-peak-august"]}
    history = handle.history()
    assert [e["task"] for e in of_type(history, "TaskScheduled")] == [
        "book_flight", "book_hotel", "book_car", "cancel", "cancel"]
    # SoldOut is non-retryable: one attempt although the policy allows two.
    car_key = next(e["key"] for e in history if e.get("task") == "book_car")
    car_events = [e for e in history if e.get("key") == car_key]
    assert [e["type"] for e in car_events] == ["TaskScheduled", "TaskStarted", "TaskFailed"]
    assert car_events[-1]["error"]["type"] == "SoldOut"

    _, calm = env.run("book_trip", {"trip": "calm-may"})
    assert calm == {"booked": ["flight-calm-may", "hotel-calm-may", "car-calm-may"]}


def test_weekly_email_example_is_retried_by_replay(env):
    # The example's policy backs off up to 10 s: a modest failure rate keeps the runs short.
    # Not too modest: at 0.35, no run of 16 was retried once in a few hundred suites
    # (0.65**16 = 0.001), failing the check below.
    handles = [env.start("weekly_email", {"failure_rate": 0.5}) for _ in range(16)]
    attempts = []
    for handle in handles:
        assert handle.result(timeout=RESULT_TIMEOUT_S) == [
            "sent to acme", "sent to globex", "sent to initech", "sent to umbrella"]
        info, history = handle.describe(), handle.history()
        attempts.append(info["attempt"])
        failed = of_type(history, "WorkflowAttemptFailed")
        assert len(failed) == info["attempt"] - 1, history
        assert all(e["error"]["type"] == "ZeroDivisionError" for e in failed)
        # Five tasks, each scheduled and started once, whatever the number of attempts.
        assert Counter(e["task"] for e in of_type(history, "TaskScheduled")) == {
            "get_all_orgs": 1, "send_weekly_email": 4}
        assert len(of_type(history, "TaskStarted")) == 5
    # P(no run is retried) = 0.5**16 < 2e-5.
    assert max(attempts) > 1, attempts


def test_weekly_email_replay_runs_no_completed_task_again(env):
    handles = [env.start("x_weekly_email", {"failure_rate": 0.5}) for _ in range(6)]
    attempts = {}
    for handle in handles:
        assert handle.result(timeout=RESULT_TIMEOUT_S) == [
            "sent to acme", "sent to globex", "sent to initech", "sent to umbrella"]
        attempts[handle.workflow_id] = handle.describe()["attempt"]
        records = env.records(handle.workflow_id)
        # Executions counted outside the engine: every task ran exactly once.
        assert Counter(r["event"] for r in records) == {"x_get_orgs": 1, "x_send_email": 4}, (
            records)
        assert sorted(r["org"] for r in records if r["event"] == "x_send_email") == [
            "acme", "globex", "initech", "umbrella"]
        assert all(r["attempt"] == 1 for r in records)
    # Each attempt fails with probability 3/4: P(no run is retried) = 4**-6.
    assert max(attempts.values()) > 1, attempts


# --- 2. non-determinism ----------------------------------------------------------------------------

def test_changed_code_between_attempts_is_a_non_determinism_error(env):
    v1 = env.supervisor_of("nd-v1", "nd_flows", ND_V1).start()
    v2 = v3 = None
    try:
        v1.wait_connected()
        handle = env.start("x_nd")
        # Version 1 runs x_nd_a, then raises: the workflow is retried (attempt 2, 3 ...).
        wait_for(lambda: handle.describe()["attempt"] >= 2, 30, "the first attempt to fail")
        assert v1.stop() == 0
        failed = of_type(handle.history(), "WorkflowAttemptFailed")
        assert failed and failed[0]["error"] == {"type": "RuntimeError",
                                                 "message": "version 1 has a bug"}

        # Version 2 spawns another task at the same position: replay diverges.
        v2 = env.supervisor_of("nd-v2", "nd_flows", ND_V2).start()
        v2.wait_connected()
        info = wait_for(lambda: (lambda i: i if i["workflow_task_failure"] else None)(
            handle.describe()), 30, "a workflow task failure")
        assert v2.stop() == 0
        text = info["workflow_task_failure"]
        assert text.startswith("NonDeterminismError: "), text
        assert "'x_nd_a'" in text and "'x_nd_b'" in text, text  # both sides named
        assert "spawn #0" in text, text
        assert info["status"] == "RUNNING"  # the workflow task failed, not the workflow
        wft_failed = of_type(handle.history(), "WorkflowTaskFailed")
        assert wft_failed and wft_failed[0]["error"]["type"] == "NonDeterminismError"
        assert env.records(handle.workflow_id, "x_nd_b") == []  # never scheduled

        # Fixed code (the original spawn order) resumes the run from its history.
        v3 = env.supervisor_of("nd-v3", "nd_flows", ND_V3).start()
        v3.wait_connected()
        assert handle.result(timeout=RESULT_TIMEOUT_S) == {"a": "a", "fixed": True}
        assert handle.describe()["workflow_task_failure"] is None
        # x_nd_a completed in attempt 1 and was replayed by every later attempt and version.
        assert [r["event"] for r in env.records(handle.workflow_id)] == ["x_nd_a"]
    finally:
        for sup in (v1, v2, v3):
            if sup is not None:
                sup.close()


# --- 3. cancel versus terminate ----------------------------------------------------------------

def test_cancel_is_seen_at_the_await_and_the_workflow_compensates(env):
    handle = env.start("x_cancellable", {"seconds": 60, "compensate_s": 1.5})
    wait_for(lambda: env.records(handle.workflow_id, "x_long_started"), 20, "x_long to start")
    handle.cancel(reason="user changed their mind")
    with pytest.raises(errors.WorkflowCancelledError) as caught:
        handle.result(timeout=RESULT_TIMEOUT_S)
    assert "user changed their mind" in str(caught.value)
    info = handle.describe()
    assert info["status"] == "CANCELLED"
    events = [r["event"] for r in env.records(handle.workflow_id)]
    # The running task was told to stop, the compensation ran, and the cancelled task
    # was not started again while the workflow compensated.
    assert Counter(events) == {"x_long_started": 1, "x_long_cancelled": 1, "x_compensate": 1}, (
        events)
    history = handle.history()
    scheduled = of_type(history, "TaskScheduled")
    assert [e["task"] for e in scheduled] == ["x_long", "x_compensate"]
    (requested,) = of_type(history, "WorkflowCancelRequested")
    assert requested["reason"] == "user changed their mind"
    assert requested["event_id"] < scheduled[1]["event_id"]  # compensation came after it
    assert history[-1]["type"] == "WorkflowExecutionCanceled"


def test_terminate_closes_at_once_and_runs_no_workflow_code(env):
    handle = env.start("x_terminable", {"seconds": 60})
    wait_for(lambda: env.records(handle.workflow_id, "x_long_started"), 20, "x_long to start")
    history_before = handle.history()
    handle.terminate(reason="stop it now")
    info = handle.describe()  # closed by the terminate itself, not by workflow code
    assert info["status"] == "TERMINATED"
    with pytest.raises(errors.WorkflowTerminatedError) as caught:
        handle.result(timeout=RESULT_TIMEOUT_S)
    assert "stop it now" in str(caught.value)
    # The running task is told to stop; nothing else runs, now or later.
    wait_for(lambda: env.records(handle.workflow_id, "x_long_cancelled"), 10,
             "the running task to be cancelled")
    time.sleep(2.0)
    events = [r["event"] for r in env.records(handle.workflow_id)]
    assert Counter(events) == {"x_long_started": 1, "x_long_cancelled": 1}, events
    history = handle.history()
    assert history[-1]["type"] == "WorkflowExecutionTerminated"
    assert history[-1]["failure"]["message"] == "stop it now"
    new = [e["type"] for e in history[len(history_before):]]
    assert new == ["WorkflowExecutionTerminated"], new


# --- 4. retries ----------------------------------------------------------------------------------

def test_task_retries_back_off_as_the_policy_says(env):
    handle, result = env.run("x_call", {"task": "x_flaky", "args": {"fail_times": 3}})
    assert result == {"ok": 4}
    history = handle.history()
    starts = {e["attempt"]: e["time_ms"] for e in of_type(history, "TaskStarted")}
    failures = {e["attempt"]: e for e in of_type(history, "TaskAttemptFailed")}
    assert sorted(starts) == [1, 2, 3, 4] and sorted(failures) == [1, 2, 3], history
    for attempt, delay_ms in ((1, 200), (2, 400), (3, 800)):
        failed = failures[attempt]
        assert failed["error"]["type"] == "Flaky"
        assert failed["retry_at_ms"] - failed["time_ms"] == delay_ms
        gap_ms = starts[attempt + 1] - failed["time_ms"]
        assert delay_ms <= gap_ms < delay_ms + 1500, (attempt, gap_ms)
    assert [r["attempt"] for r in env.records(handle.workflow_id)] == [1, 2, 3, 4]


def test_a_non_retryable_error_fails_the_task_at_once(env):
    handle, result = env.run("x_call", {"task": "x_fatal"})
    assert result["error_type"] == "Fatal", result
    assert "no point in trying again" in result["message"]
    history = handle.history()
    assert [e["type"] for e in history if e.get("key")] == [
        "TaskScheduled", "TaskStarted", "TaskFailed"]
    assert len(env.records(handle.workflow_id)) == 1  # one attempt of the five allowed


def test_a_task_whose_last_attempt_dies_with_its_supervisor_fails_and_the_workflow_sees_it(env):
    first = env.supervisor_of("lost-1", "lost_flows", LOST).start()
    second = None
    try:
        first.wait_connected()
        handle = env.start("x_lost")
        wait_for(lambda: env.records(handle.workflow_id, "x_doomed"), 20, "x_doomed to start")
        first.kill()  # kill -9, workers too: its lease (3 s) runs out
        second = env.supervisor_of("lost-2", "lost_flows", LOST).start()
        assert handle.result(timeout=RESULT_TIMEOUT_S) == {"error_type": "SupervisorLost"}
        (failed,) = of_type(handle.history(), "TaskFailed")
        assert failed["attempt"] == 1 and failed["error"]["type"] == "SupervisorLost"
        assert len(env.records(handle.workflow_id)) == 1
    finally:
        for sup in (first, second):
            if sup is not None:
                sup.close()


def test_a_workflow_task_whose_history_outgrows_its_dispatch_is_fetched(env):
    """A run's history past limits.wft_history_tail_bytes_max (2 MiB; here 150 results of
    60 KB, 9 MB: more than one gRPC message) is not put in a workflow task's dispatch
    (flow.dispatches.dispatch_of): a supervisor that has none of it fetches it in pages
    bounded by bytes (limits.history_page_bytes_max), and the run goes on."""
    first = env.supervisor_of("bighist-1", "bighist_flows", BIG_HISTORY).start()
    second = None
    try:
        first.wait_connected()
        handle = env.start("x_big_history", {"n": 150})

        def waiting_for_the_signal() -> bool:
            history = handle.history()
            return (len(of_type(history, "TaskCompleted")) == 150
                    and history[-1]["type"] == "WorkflowTaskCompleted")
        wait_for(waiting_for_the_signal, 90, "150 tasks, then the wait for the signal")
        first.close()  # a new supervisor: it holds none of the run's 9 MB history
        second = env.supervisor_of("bighist-2", "bighist_flows", BIG_HISTORY).start()
        second.wait_connected()
        handle.signal("go", "go")
        assert handle.result(timeout=RESULT_TIMEOUT_S) == [150 * 60_000, "go"]
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{second.health_port}/metrics",
                                    timeout=5) as answer:
            text = answer.read().decode()
        fetched = [line for line in text.splitlines()
                   if line.startswith('coda_supervisor_history_fetches_total{outcome="ok"')]
        assert fetched and float(fetched[0].rsplit(" ", 1)[1]) >= 1, fetched
    finally:
        for sup in (first, second):
            if sup is not None:
                sup.close()


# --- 5. timeouts -----------------------------------------------------------------------------------

def test_start_to_close_timeout(env):
    handle, result = env.run("x_call", {"task": "x_slow", "args": {"seconds": 30}})
    assert result["error_type"] == "StartToCloseTimeout", result
    history = handle.history()
    starts = of_type(history, "TaskStarted")
    retried = of_type(history, "TaskAttemptFailed")
    failed = of_type(history, "TaskFailed")
    assert len(starts) == 2 and len(retried) == 1 and len(failed) == 1, history
    assert retried[0]["error"]["type"] == failed[0]["error"]["type"] == "StartToCloseTimeout"
    for start, end in ((starts[0], retried[0]), (starts[1], failed[0])):
        assert 1000 <= end["time_ms"] - start["time_ms"] < 4000
    wait_for(lambda: len(env.records(handle.workflow_id, "x_slow_cancelled")) == 2, 10,
             "both timed-out attempts to be cancelled on the worker")
    assert len(env.records(handle.workflow_id, "x_slow")) == 2


def test_heartbeat_timeout(env):
    # Heart-beats for 3.5 s (past the 3 s timeout), then goes silent.
    handle, result = env.run("x_call", {"task": "x_beats", "args": {"beat_s": 3.5, "then_s": 60}})
    assert result["error_type"] == "HeartbeatTimeout", result
    history = handle.history()
    (start,), (failed,) = of_type(history, "TaskStarted"), of_type(history, "TaskFailed")
    elapsed_ms = failed["time_ms"] - start["time_ms"]
    # Heartbeats kept it alive past 3 s; silence ended it about 3 s after the last one.
    assert 5500 <= elapsed_ms < 10_000, elapsed_ms
    wait_for(lambda: env.records(handle.workflow_id, "x_beats_cancelled"), 10,
             "the silent task to be cancelled on the worker")


@pytest.fixture(scope="module")
def starved_declared(env):
    """x_starved declared by a supervisor that is gone: its queue is never served."""
    sup = env.supervisor_of("starved", "starved_flows", STARVED_DECLARED).start()
    try:
        sup.wait_connected()
        assert sup.stop() == 0
    finally:
        sup.close()


def test_schedule_to_start_timeout(env, starved_declared):
    handle, result = env.run("x_call", {"task": "x_starved"})
    assert result["error_type"] == "ScheduleToStartTimeout", result
    history = handle.history()
    assert of_type(history, "TaskStarted") == []
    (scheduled,), (failed,) = of_type(history, "TaskScheduled"), of_type(history, "TaskFailed")
    assert 1000 <= failed["time_ms"] - scheduled["time_ms"] < 4000
    assert failed["attempt"] == 1  # not retried: waiting longer in the queue would not help


def test_workflow_execution_timeout(env):
    handle = env.start("x_call", {"task": "x_long", "args": {"seconds": 60}},
                       execution_timeout=2)
    with pytest.raises(errors.WorkflowTimedOutError):
        handle.result(timeout=RESULT_TIMEOUT_S)
    info = handle.describe()
    assert info["status"] == "TIMED_OUT"
    assert 2000 <= info["close_time_ms"] - info["start_time_ms"] < 5000, info
    assert handle.history()[-1]["type"] == "WorkflowExecutionTimedOut"
    wait_for(lambda: env.records(handle.workflow_id, "x_long_cancelled"), 10,
             "the running task to be cancelled")


# --- 6. bad input ----------------------------------------------------------------------------------

def test_unknown_workflow_type_is_refused_at_start(env):
    with SyncClient(env.cluster.address) as client:  # undeclared types refused (the default)
        wid = new_id("nope")
        with pytest.raises(NotFound) as caught:
            client.start_workflow("no_such_workflow", {}, workflow_id=wid)
        assert "no_such_workflow" in caught.value.message
        with pytest.raises(NotFound):
            client.describe_workflow(wid)


def test_unknown_task_type_fails_at_the_call_site(env):
    handle, result = env.run("x_call", {"task": "no_such_task"})
    assert result["error_type"] == "UnknownTaskType", result
    assert "no_such_task" in result["message"]
    history = handle.history()
    assert of_type(history, "TaskStarted") == []
    assert [e["error"]["type"] for e in of_type(history, "TaskFailed")] == ["UnknownTaskType"]


def test_unencodable_task_args_fail_the_workflow_clearly(env):
    handle, result = env.run("x_bad_args", {"catch": True})
    assert result == {"refused": "args of task 'x_echo' can't be encoded as msgpack: can not "
                                 "serialize 'set' object", "then": [1, 2, 3]}
    assert [e["task"] for e in of_type(handle.history(), "TaskScheduled")] == ["x_echo"]

    handle = env.start("x_bad_args")
    with pytest.raises(errors.WorkflowFailedError) as caught:
        handle.result(timeout=RESULT_TIMEOUT_S)
    message = str(caught.value)
    assert "PayloadError" in message and "x_echo" in message and "msgpack" in message, message
    info = handle.describe()
    assert info["attempt"] == 1, info  # the same history fails the same way: not retried
    assert of_type(handle.history(), "TaskScheduled") == []
    assert env.records(handle.workflow_id) == []


@pytest.mark.parametrize("size, limit", [(100_000, PAYLOAD_BYTES_MAX),  # the cluster's limit
                                         (3 * 1024 * 1024, 2 * 1024 * 1024)])  # the worker's
def test_an_oversized_task_result_fails_the_task_for_good(env, size, limit):
    handle, result = env.run("x_call", {"task": "x_big", "args": {"size": size}})
    assert result["error_type"] == "PayloadError", result
    assert str(limit) in result["message"], result
    history = handle.history()
    assert of_type(history, "TaskAttemptFailed") == []  # non-retryable (5 attempts allowed)
    assert [e["attempt"] for e in of_type(history, "TaskFailed")] == [1]
    assert len(env.records(handle.workflow_id)) == 1


@pytest.mark.parametrize("size", [
    pytest.param(100_000, id="over-the-cluster-limit"),
    pytest.param(3 * 1024 * 1024, id="over-the-worker-limit")])
def test_oversized_task_args_fail_the_workflow_before_the_task_runs(env, size):
    handle = env.start("x_big_args", {"size": size})
    # Until it closes, or schedules the task (then it would retry for ever: don't wait).
    wait_for(lambda: handle.describe()["status"] != "RUNNING"
             or of_type(handle.history(), "TaskScheduled"), RESULT_TIMEOUT_S, "an outcome")
    assert of_type(handle.history(), "TaskScheduled") == []
    info = handle.describe()
    assert info["status"] == "FAILED", info["status"]
    assert info["failure"].startswith("PayloadError: ") and "over the limit" in info["failure"], (
        info["failure"])
    assert info["attempt"] == 1  # final: its retry policy would allow more
    assert of_type(handle.history(), "TaskScheduled") == []
    assert env.records(handle.workflow_id) == []


@pytest.mark.parametrize("size", [
    pytest.param(100_000, id="over-the-cluster-limit"),
    pytest.param(3 * 1024 * 1024, id="over-the-worker-limit")])
def test_an_oversized_workflow_result_fails_the_workflow(env, size):
    handle = env.start("x_big_result", {"size": size})
    info = handle.wait_closed(timeout=RESULT_TIMEOUT_S)
    assert info["status"] == "FAILED", info["status"]
    assert info["failure"].startswith("PayloadError: ") and "over the limit" in info["failure"], (
        info["failure"])
    assert info["attempt"] == 1  # final: its retry policy would allow more


def test_unencodable_workflow_args_are_refused_before_any_rpc(env):
    # Nothing listens on port 1: any RPC would fail with Unavailable, not PayloadError.
    with SyncClient("127.0.0.1:1", timeout_s=2.0) as offline:
        with pytest.raises(PayloadError) as caught:
            offline.start_workflow("x_call", {"task": object()}, workflow_id="never")
    assert "workflow args" in caught.value.message
    wid = new_id("unencodable")
    with pytest.raises(PayloadError):
        env.client.start_workflow("x_call", {"args": {1, 2}}, workflow_id=wid)
    with pytest.raises(NotFound):
        env.client.describe_workflow(wid)
