"""The execution half of the shard state machine, driven by a scripted leader and worker.

A real LMDB store behind the Applier (one committed entry per command, as on a replica),
the real workflow runtime as the worker, and the leader's choices (which entries to
assign, which timers are due, when a supervisor expires) made by the test. Every check
reads the committed state.
"""

from __future__ import annotations

import asyncio

import pytest

import coda
from coda.client.sdk import definition_of
from coda.client.workflow_runtime import RunInfo, WorkflowRun
from coda.flow import commands, model
from coda.flow import sm_common as c
from coda.flow.applier import Applier
from coda.flow.dispatches import dispatch_of
from coda.storage import codec, keys
from coda.storage.env import LmdbOptions, ShardStore

T0 = 1_700_000_000_000


@coda.task(name="inc", retry=coda.RetryPolicy(maximum_attempts=3, initial_interval=2))
def inc(n):
    return n + 1


@coda.workflow(name="twice")
async def twice(n):
    a = await coda.context.spawn_task(inc, args={"n": n})
    return await coda.context.spawn_task(inc, args={"n": a})


@coda.workflow(name="careful")
async def careful(n):
    try:
        return await coda.context.spawn_task(inc, args={"n": n})
    except asyncio.CancelledError:
        await coda.context.spawn_task("undo", args={})
        raise


@coda.workflow(name="typo")
async def typo():
    try:
        await coda.context.spawn_task("no_such_task")
    except coda.TaskFailedError as exc:
        return exc.error_type


@coda.workflow(name="parent")
async def parent(n, child_type="twice"):
    try:
        return await coda.context.spawn_workflow(child_type, args={"n": n})
    except coda.ChildWorkflowFailedError as exc:
        return f"child {exc.status}: {exc.error_type}"


@coda.workflow(name="napper")
async def napper():
    before = coda.context.now()
    await coda.context.sleep(30)
    await coda.context.sleep(0)
    return (coda.context.now() - before).total_seconds()


@coda.workflow(name="impatient")
async def impatient(n):
    try:
        return await coda.context.wait_for(coda.context.spawn_task(inc, args={"n": n}), 10)
    except TimeoutError:
        return "gave up"


WORKFLOWS = {definition_of(f).name: definition_of(f)
             for f in (twice, careful, typo, parent, napper, impatient)}


class Sim:
    # What the scripted supervisor declares and runs (subclasses in other tests set theirs).
    workflows = WORKFLOWS
    task_types = ["inc", "undo"]

    def __init__(self, path):
        self.store = ShardStore(str(path), LmdbOptions(sync=False, metasync=False))
        self.applier = Applier(self.store)
        self.index = 0
        self.time_ms = T0
        self.effects: list[dict] = []

    def apply(self, data) -> dict:
        self.index += 1
        result = self.applier.apply(self.index, data)
        self.applier.commit()
        assert "error" not in result, result
        if "effects" in result:
            self.effects.append(result["effects"])
        return result["ok"]

    def read(self, fn):
        with self.store.read() as txn:
            return fn(txn)

    def register(self, sid="s1", running=()):
        return self.apply(commands.register_supervisor(
            time_ms=self.time_ms, supervisor_id=sid, build_id="b",
            workflow_types=list(self.workflows), task_types=list(self.task_types),
            running=list(running)))

    def deliver_outbox(self) -> int:
        """What flow.outbox does, on this one shard: propose each entry, then outbox_done."""
        from coda.flow import outbox
        entries = self.read(lambda txn: [(keys.from_u64(k), codec.unpack(v))
                                         for k, v in txn.scan(keys.OUTBOX)])
        done, refused = [], []
        for seq, entry in entries:
            self.index += 1
            result = self.applier.apply(self.index, outbox.command_for(entry))
            self.applier.commit()
            if "error" in result:
                refused.append({"seq": seq, "error": result["error"]})
            else:
                done.append(seq)
        if entries:
            self.apply(commands.outbox_done(time_ms=self.time_ms, done=done, refused=refused))
        return len(entries)

    def start(self, wid, wtype, args, timeout_ms=0):
        return self.apply(commands.start_workflow(
            request_id=f"start-{wid}", time_ms=self.time_ms, workflow_id=wid,
            workflow_type=wtype, input_payload=codec.pack(args), run_id=f"run-{wid}",
            reuse_policy=model.ALLOW_DUPLICATE, execution_timeout_ms=timeout_ms,
            allow_undeclared_type=False))

    def queued(self) -> list[list]:
        return self.read(lambda txn: [[k[:-9].decode(), keys.from_u64(k[-8:])]
                                      for k, _ in txn.scan(keys.QUEUES)])

    def assign(self, sid="s1") -> list[dict]:
        items = self.queued()
        assigned = self.apply(commands.assign(time_ms=self.time_ms, supervisor_id=sid,
                                              items=items))["assigned"]
        return [dict(item, dispatch=self.read(lambda txn, i=item: dispatch_of(txn, i)))
                for item in assigned]

    def run_workflow_task(self, item) -> list[dict]:
        d = item["dispatch"]
        run = WorkflowRun(self.workflows[d.type_name], codec.unpack(d.input),
                          RunInfo(d.workflow_id, d.run_id, d.start_time_ms, d.workflow_attempt))
        history = [dict(e, result=codec.unpack(e["result"])) if e["type"] == "TaskCompleted"
                   else e for e in codec.unpack(d.history)]  # as the worker decodes them
        out = []
        for command in run.advance(history):
            if command["type"] == "CompleteWorkflow":
                command = dict(command, result=codec.pack(command["result"]))
            out.append(command)
        return out

    def complete(self, item, outcome) -> dict:
        return self.apply(commands.complete(
            time_ms=self.time_ms, request_id=f"c-{self.index}", workflow_id=item["workflow_id"],
            run_id=item["run_id"], key=item["key"], attempt=item["attempt"], outcome=outcome))

    def step(self, task_outcome=None) -> int:
        """Assign everything queued and complete it (tasks: inc(n) unless told otherwise)."""
        items = self.assign()
        for item in items:
            if item["kind"] == "wft":
                self.complete(item, {"commands": self.run_workflow_task(item)})
            else:
                outcome = task_outcome(item) if task_outcome else None
                if outcome is None and item["dispatch"].type_name == "inc":
                    args = codec.unpack(item["dispatch"].input)
                    outcome = {"result": codec.pack(inc(**args))}
                elif outcome is None:
                    outcome = {"result": codec.pack(None)}
                self.complete(item, outcome)
        return len(items)

    def fire_due(self) -> int:
        due = self.read(lambda txn: [bytes(k) for k, _ in txn.scan(keys.TIMERS)
                                     if keys.timer_fire_ms(k) <= self.time_ms])
        return self.apply(commands.fire_timers(time_ms=self.time_ms, timer_keys=due))["fired"]

    def record(self, wid) -> dict:
        return self.read(lambda txn: c.load_workflow(txn, wid))

    def history(self, wid) -> list[dict]:
        rec = self.record(wid)
        return self.read(lambda txn: [codec.unpack(v) for _, v in txn.scan(
            keys.HISTORY, prefix=keys.history_prefix(wid, rec["run_id"]))])


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def test_a_workflow_runs_to_completion_through_committed_assignments(sim):
    sim.start("w1", "twice", {"n": 1})
    while sim.step():
        pass
    record = sim.record("w1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3
    types = [e["type"] for e in sim.history("w1")]
    assert types == ["WorkflowExecutionStarted", "WorkflowTaskCompleted", "TaskScheduled",
                     "TaskStarted", "TaskCompleted", "WorkflowTaskCompleted", "TaskScheduled",
                     "TaskStarted", "TaskCompleted", "WorkflowTaskCompleted",
                     "WorkflowExecutionCompleted"]
    assert sim.read(lambda txn: list(txn.scan(keys.ASSIGNMENTS))) == []
    assert sim.queued() == []
    assert sim.effects[-1] == {"closed": ["w1"]}


def test_undeclared_workflow_type_is_refused_at_start(sim):
    sim.index += 1
    result = sim.applier.apply(sim.index, commands.start_workflow(
        request_id="x", time_ms=T0, workflow_id="w", workflow_type="nope",
        input_payload=codec.pack({}), run_id="r", reuse_policy=model.ALLOW_DUPLICATE,
        allow_undeclared_type=False))
    sim.applier.commit()
    assert result["error"]["code"] == "NOT_FOUND" and "nope" in result["error"]["message"]


def test_an_unknown_task_type_fails_at_the_call_site(sim):
    sim.start("w1", "typo", {})
    while sim.step():
        pass
    assert codec.unpack(sim.record("w1")["result"]) == "UnknownTaskType"


def test_a_failed_attempt_backs_off_by_the_policy_then_retries(sim):
    sim.start("w1", "twice", {"n": 1})
    sim.step()  # the workflow task schedules inc
    [item] = sim.assign()
    sim.complete(item, {"failure": {"type": "Boom", "message": "no"}})
    failed = [e for e in sim.history("w1") if e["type"] == "TaskAttemptFailed"]
    assert failed[0]["retry_at_ms"] == sim.time_ms + 2000  # initial_interval=2
    assert sim.queued() == []
    sim.time_ms += 1999
    assert sim.fire_due() == 0                              # never before its time
    sim.time_ms += 1
    assert sim.fire_due() == 1 and sim.fire_due() == 0      # exactly once
    [retry] = sim.assign()
    assert retry["attempt"] == 2


def test_a_stale_completion_is_fenced_after_the_supervisor_expired(sim):
    sim.start("w1", "twice", {"n": 1})
    sim.step()
    [item] = sim.assign()
    ok = sim.apply(commands.expire_supervisor(time_ms=sim.time_ms, supervisor_id="s1"))
    assert ok["requeued"] == 1
    sim.register("s2")
    sim.time_ms += 2000  # a lost attempt is a failed one: retried after the policy's backoff
    assert sim.fire_due() == 1
    [again] = sim.assign("s2")
    assert again["key"] == item["key"] and again["attempt"] == item["attempt"] + 1
    late = sim.complete(item, {"result": codec.pack(99)})
    assert "stale attempt" in late["rejected"]
    assert sim.complete(again, {"result": codec.pack(2)}) == {"accepted": True}
    completed = [e for e in sim.history("w1") if e["type"] == "TaskCompleted"]
    assert [codec.unpack(e["result"]) for e in completed] == [2]


def test_a_hello_requeues_assignments_the_supervisor_never_got(sim):
    sim.start("w1", "twice", {"n": 1})
    sim.start("w2", "twice", {"n": 1})
    held, lost = sim.assign()
    ok = sim.register("s1", running=[[held["workflow_id"], held["run_id"], "", held["attempt"]]])
    assert ok == {"requeued": 1}
    [again] = sim.assign()
    assert again["workflow_id"] == lost["workflow_id"] and again["attempt"] > lost["attempt"]
    assert sim.complete(held, {"commands": sim.run_workflow_task(held)}) == {"accepted": True}


def test_cancel_reaches_the_workflow_which_compensates_and_ends_cancelled(sim):
    sim.start("w1", "careful", {"n": 1})
    sim.step()
    [task] = sim.assign()
    sim.apply(commands.close_request(commands.CANCEL_WORKFLOW, request_id="cx",
                                     time_ms=sim.time_ms, workflow_id="w1", run_id=None,
                                     reason="user"))
    assert sim.effects[-1]["cancel"] == [["s1", "w1", "run-w1", task["key"], 1]]
    while sim.step():
        pass
    record = sim.record("w1")
    assert record["status"] == model.CANCELLED
    scheduled = [e["task"] for e in sim.history("w1") if e["type"] == "TaskScheduled"]
    assert scheduled == ["inc", "undo"]  # the compensation ran after the cancel
    late = sim.complete(task, {"result": codec.pack(2)})
    assert "closed" in late["rejected"] or "stale" in late["rejected"]


def test_terminate_closes_at_once_and_clears_queues_and_assignments(sim):
    sim.start("w1", "twice", {"n": 1})
    sim.step()
    sim.apply(commands.close_request(commands.TERMINATE_WORKFLOW, request_id="tx",
                                     time_ms=sim.time_ms, workflow_id="w1", run_id=None,
                                     reason="ops"))
    record = sim.record("w1")
    assert record["status"] == model.TERMINATED and record["failure"]["message"] == "ops"
    assert sim.queued() == [] and sim.assign() == []
    assert sim.effects[-1]["closed"] == ["w1"]
    assert sim.history("w1")[-1]["type"] == "WorkflowExecutionTerminated"


def test_the_execution_timeout_closes_the_run_timed_out(sim):
    sim.start("w1", "twice", {"n": 1}, timeout_ms=5000)
    sim.step()
    sim.time_ms += 5000
    assert sim.fire_due() == 1
    assert sim.record("w1")["status"] == model.TIMED_OUT
    assert sim.queued() == []


def test_a_workflow_failure_is_retried_by_replay_keeping_task_results(sim):
    sim.start("w1", "twice", {"n": 1})
    sim.step()
    sim.step()  # inc(1) = 2 completes
    [wft] = sim.assign()
    sim.complete(wft, {"commands": [{"type": "FailWorkflow",
                                     "error": {"type": "ZeroDivisionError", "message": "1/0"},
                                     "retry": {"initial_interval": 0.5}}]})
    record = sim.record("w1")
    assert record["status"] == model.RUNNING and record["attempt"] == 2
    sim.time_ms += 500
    sim.fire_due()
    while sim.step():
        pass
    record = sim.record("w1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 3
    task_starts = [e for e in sim.history("w1") if e["type"] == "TaskStarted"]
    assert len(task_starts) == 2  # inc(1) was not run again by the second attempt


def test_a_child_workflow_runs_and_its_result_wakes_the_parent(sim):
    sim.start("p1", "parent", {"n": 5})
    while sim.step() or sim.deliver_outbox():
        pass
    assert codec.unpack(sim.record("p1")["result"]) == 7
    child_id = "p1/child-0"
    assert sim.record(child_id)["status"] == model.COMPLETED
    assert sim.record(child_id)["parent"]["workflow_id"] == "p1"
    types = [e["type"] for e in sim.history("p1")]
    assert types.count("ChildWorkflowScheduled") == 1 and "ChildWorkflowClosed" in types
    assert sim.read(lambda txn: list(txn.scan(keys.OUTBOX))) == []


def test_a_child_of_an_undeclared_type_fails_at_the_parents_await(sim):
    sim.start("p2", "parent", {"n": 5, "child_type": "nope"})
    while sim.step() or sim.deliver_outbox():
        pass
    assert codec.unpack(sim.record("p2")["result"]) == "child FAILED: NOT_FOUND"


def test_cancel_fails_tasks_not_yet_started(sim):
    sim.start("w3", "careful", {"n": 3})
    sim.step()                      # the workflow task runs: its inc is queued
    assert len(sim.queued()) == 1
    sim.apply(commands.close_request(commands.CANCEL_WORKFLOW, request_id="c3",
                                     time_ms=sim.time_ms, workflow_id="w3", run_id=None,
                                     reason="user"))
    assert all("cancel" not in e for e in sim.effects)   # nothing was running to tell
    assert [q for q in sim.queued() if q[0] == "task/inc"] == []   # it never starts ...
    failed = [e for e in sim.history("w3") if e["type"] == "TaskFailed"]
    assert [e["error"]["type"] for e in failed] == ["CancelledError"]  # ... it failed
    while sim.step():
        pass
    assert sim.record("w3")["status"] == model.CANCELLED
    scheduled = [e["task"] for e in sim.history("w3") if e["type"] == "TaskScheduled"]
    assert scheduled == ["inc", "undo"]
    assert [e for e in sim.history("w3") if e["type"] == "TaskStarted"][0]["key"] != failed[0]["key"]


def test_a_durable_sleep_fires_once_at_its_time_and_moves_now(sim):
    sim.start("z1", "napper", {})
    sim.step()
    assert [e["type"] for e in sim.history("z1")][-1] == "TimerStarted"
    sim.time_ms += 29_999
    assert sim.fire_due() == 0 and sim.step() == 0      # not before its time
    sim.time_ms += 1
    assert sim.fire_due() == 1 and sim.fire_due() == 0  # once
    while sim.step() or sim.fire_due():
        pass
    record = sim.record("z1")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == 30.0
    assert [e["type"] for e in sim.history("z1")].count("TimerFired") == 2
    assert sim.read(lambda txn: list(txn.scan(keys.TIMERS))) == []


def test_closing_a_run_removes_its_pending_timers(sim):
    sim.start("z2", "napper", {})
    sim.step()
    sim.apply(commands.close_request(commands.TERMINATE_WORKFLOW, request_id="tz",
                                     time_ms=sim.time_ms, workflow_id="z2", run_id=None,
                                     reason="ops"))
    assert sim.read(lambda txn: list(txn.scan(keys.TIMERS))) == []


def test_wait_for_returns_the_result_that_comes_in_time(sim):
    sim.start("i1", "impatient", {"n": 1})
    while sim.step():
        pass
    assert codec.unpack(sim.record("i1")["result"]) == 2


def test_wait_for_raises_timeout_when_its_timer_fires_first(sim):
    sim.start("i2", "impatient", {"n": 1})
    sim.step()                          # schedules inc and a 10 s timer
    [task] = sim.assign()               # inc runs ... and takes too long
    sim.time_ms += 10_000
    assert sim.fire_due() == 1
    while sim.step():                   # (the step would run inc; it is already assigned)
        pass
    assert codec.unpack(sim.record("i2")["result"]) == "gave up"
    # The run closed and cancelled the task: its late result is fenced off.
    assert "CANCELLED" in sim.complete(task, {"result": codec.pack(2)})["rejected"]
