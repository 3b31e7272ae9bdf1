"""Real worker processes behind a WorkerPool, no Flow: the supervisor ⇄ worker protocol of
docs/execution-protocol.md, driven the way a supervisor drives it.

The workflows and tasks live in a module written to tmp_path (the workers import it from
their cwd). Each test starts its own pool and stops it, so a test sees only its own workers.
"""

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from coda.client import task_context
from coda.errors import InvalidArgument
from coda.storage import codec
from coda.supervisor import frames
from coda.supervisor import pool as pool_module
from coda.supervisor.pool import WorkerPool, WorkerStartError

FLOWS = '''
import asyncio, collections, os, sys, time
import coda
from coda.client import task_context

BODY_STARTS = collections.Counter()  # workflow id -> times its body started in this process


class Boom(Exception):
    pass


@coda.task(name="add")
def add(a, b):
    print("print() from a sync task")
    os.write(1, b"raw bytes on fd 1 from a sync task")
    return a + b


@coda.task(name="add_async")
async def add_async(a, b):
    await asyncio.sleep(0)
    print("print() from an async task")
    sys.stdout.write("and sys.stdout.write\\n")
    return a + b


@coda.task(name="fail", retry=coda.RetryPolicy(non_retryable_errors=["Boom"]))
def fail(kind):
    if kind == "boom":
        raise Boom("boom, for good")
    raise ValueError("maybe next time")


@coda.task(name="bad_result")
def bad_result():
    return {1, 2}


@coda.task(name="whoami")
def whoami():
    info = task_context.current_task()
    task_context.heartbeat("from a thread")
    time.sleep(0.1)
    return {"pid": os.getpid(), "key": info.key, "attempt": info.attempt,
            "idempotency_key": info.idempotency_key, "details": info.heartbeat_details}


@coda.task(name="beat")
async def beat(n, then_sleep):
    for i in range(n):
        task_context.heartbeat({"i": i})
    await asyncio.sleep(then_sleep)
    return "beaten"


@coda.task(name="sleep")
async def sleep(seconds):
    task_context.heartbeat(os.getpid())
    await asyncio.sleep(seconds)
    return "slept"


@coda.task(name="hang")
def hang():
    task_context.heartbeat(os.getpid())
    time.sleep(60)


@coda.workflow(name="pipeline", retry=coda.RetryPolicy(maximum_attempts=3))
async def pipeline(x):
    BODY_STARTS[coda.context.workflow_id()] += 1
    a = await coda.context.spawn_task(add, args={"a": x, "b": 1})
    b = await coda.context.spawn_task(add_async, args={"a": a, "b": 10})
    return {"a": a, "b": b, "body_starts": BODY_STARTS[coda.context.workflow_id()]}


@coda.workflow(name="unencodable")
async def unencodable():
    return object()


@coda.workflow(name="raises", retry=coda.RetryPolicy(maximum_attempts=4))
async def raises():
    return 1 / 0
'''

TYPES = {"workflow_types": ["pipeline", "raises", "unencodable"],
         "task_types": ["add", "add_async", "bad_result", "beat", "fail", "hang", "sleep", "whoami"],
         "upgradable_workflow_types": []}


class Supervisor:
    """What a supervisor would do with the pool's events: keep them, let tests await them."""

    def __init__(self):
        self.done: dict[str, dict] = {}
        self.heartbeats: list[dict] = []
        self._ids = 0
        self._waiters: dict[str, asyncio.Future] = {}

    def on_event(self, msg: dict) -> None:
        if msg["op"] == "heartbeat":
            self.heartbeats.append(msg)
            return
        assert msg["op"] == "done" and msg["id"] not in self.done, msg  # once per item
        self.done[msg["id"]] = msg
        waiter = self._waiters.pop(msg["id"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    def submit(self, pool: WorkerPool, op: str, **fields) -> str:
        self._ids += 1
        item_id = f"{op}-{self._ids}"
        pool.submit(dict(fields, op=op, id=item_id))
        return item_id

    async def result(self, item_id: str, timeout_s: float = 10.0) -> dict:
        if item_id not in self.done:
            self._waiters[item_id] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self._waiters[item_id], timeout_s)
        return self.done[item_id]

    async def run(self, pool: WorkerPool, op: str, **fields) -> dict:
        return await self.result(self.submit(pool, op, **fields))

    async def heartbeat_of(self, item_id: str, timeout_s: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for beat in self.heartbeats:
                if beat["id"] == item_id:
                    return beat
            await asyncio.sleep(0.01)
        raise AssertionError(f"no heartbeat from {item_id}")


@pytest.fixture
def flows_dir(tmp_path):
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def with_pool(cwd, body, *, workers=1, module="flows", **options):
    """Start a pool, run `body(pool, supervisor)`, stop the pool whatever happens."""
    async def run():
        supervisor = Supervisor()
        pool = WorkerPool(module, workers, on_event=supervisor.on_event,
                          payload_bytes_max=64 * 1024, cwd=str(cwd), **options)
        types = await pool.start()
        try:
            return await body(pool, supervisor, types)
        finally:
            await pool.stop(deadline_s=2.0)
    return asyncio.run(run())


def task(name, **args):
    return {"task": name, "args": codec.pack(args), "workflow_id": "wf-1", "run_id": "run-1",
            "key": f"{name}:k", "attempt": 1, "idempotency_key": f"wf-1/{name}:k",
            "heartbeat_details": None}


# --- tasks -------------------------------------------------------------------------------------

def test_ready_lists_the_types_and_tasks_round_trip_sync_and_async(flows_dir, capfd):
    async def body(pool, sup, types):
        assert types == TYPES
        assert len(pool.worker_pids()) == 2
        sync, async_ = await asyncio.gather(sup.run(pool, "task", **task("add", a=2, b=3)),
                                            sup.run(pool, "task", **task("add_async", a=4, b=5)))
        assert codec.unpack(sync["result"]) == 5 and codec.unpack(async_["result"]) == 9
        assert pool.in_flight() == 0
    with_pool(flows_dir, body, workers=2)
    err = capfd.readouterr().err  # the user's output went to stderr, not into the channel
    assert "print() from a sync task" in err and "raw bytes on fd 1" in err
    assert "print() from an async task" in err and "and sys.stdout.write" in err


def test_task_errors_carry_type_stack_and_non_retryable_from_the_retry_policy(flows_dir):
    async def body(pool, sup, types):
        boom = (await sup.run(pool, "task", **task("fail", kind="boom")))["error"]
        later = (await sup.run(pool, "task", **task("fail", kind="later")))["error"]
        unknown = (await sup.run(pool, "task", **task("nope")))["error"]
        unencodable = (await sup.run(pool, "task", **task("bad_result")))["error"]
        return boom, later, unknown, unencodable
    boom, later, unknown, unencodable = with_pool(flows_dir, body)
    assert (boom["type"], boom["message"], boom["non_retryable"]) == ("Boom", "boom, for good", True)
    assert 'raise Boom("boom, for good")' in boom["stack"]
    assert (later["type"], later["non_retryable"]) == ("ValueError", False)
    assert unknown["type"] == "UnknownTaskType" and unknown["non_retryable"] is True
    assert "'nope'" in unknown["message"] and "'add'" in unknown["message"]
    assert unencodable["type"] == "PayloadError" and unencodable["non_retryable"] is True
    assert "result of task bad_result" in unencodable["message"]


def test_task_context_and_throttled_heartbeats(flows_dir):
    async def body(pool, sup, types):
        fields = dict(task("whoami"), attempt=3, heartbeat_details=codec.pack({"at": 7}))
        whoami_id = sup.submit(pool, "task", **fields)
        beat_id = sup.submit(pool, "task", **task("beat", n=5, then_sleep=0.8))
        return [await sup.result(whoami_id), await sup.result(beat_id)], sup.heartbeats, whoami_id
    (whoami, beat), heartbeats, whoami_id = with_pool(flows_dir, body)
    assert codec.unpack(whoami["result"])["key"] == "whoami:k"
    info = codec.unpack(whoami["result"])
    assert (info["attempt"], info["idempotency_key"], info["details"]) == (3, "wf-1/whoami:k", {"at": 7})
    assert codec.unpack(beat["result"]) == "beaten"
    from_thread = [h for h in heartbeats if h["id"] == whoami_id]
    assert [codec.unpack(h["details"]) for h in from_thread] == ["from a thread"]
    # Five calls at once: the first goes out at once, the latest after the 0.5 s interval.
    beats = [codec.unpack(h["details"]) for h in heartbeats if h["id"] != whoami_id]
    assert beats == [{"i": 0}, {"i": 4}]


def test_heartbeat_outside_a_task_is_a_clear_error():
    assert task_context.current_task() is None
    with pytest.raises(InvalidArgument, match="heartbeat.*only usable inside a running @coda.task"):
        task_context.heartbeat("x")


def test_cancel_of_an_async_task_and_stop_finishing_in_flight_work(flows_dir):
    async def body(pool, sup, types):
        long_id = sup.submit(pool, "task", **task("sleep", seconds=30))
        await sup.heartbeat_of(long_id)
        started = time.monotonic()
        pool.cancel(long_id)
        cancelled = await sup.result(long_id)
        assert time.monotonic() - started < 2
        short_id = sup.submit(pool, "task", **task("sleep", seconds=0.3))
        await sup.heartbeat_of(short_id)
        await pool.stop(deadline_s=5)  # waits for the short task, which still reports
        assert pool.worker_pids() == [] and pool.in_flight() == 0
        return cancelled, sup.done[short_id]
    cancelled, finished = with_pool(flows_dir, body)
    assert cancelled["error"]["type"] == "CancelledError"
    assert codec.unpack(finished["result"]) == "slept"


def test_stop_kills_what_does_not_finish_by_the_deadline(flows_dir):
    async def body(pool, sup, types):
        hang_id = sup.submit(pool, "task", **task("hang"))
        await sup.heartbeat_of(hang_id)
        started = time.monotonic()
        await pool.stop(deadline_s=0.3)
        return time.monotonic() - started
    assert with_pool(flows_dir, body) < 2


# --- workflow tasks ------------------------------------------------------------------------------

class History:
    def __init__(self, workflow_type: str, input_: dict | None):
        self.events = []
        self.add("WorkflowExecutionStarted", input=codec.pack(input_), workflow_type=workflow_type)

    def add(self, kind: str, **fields) -> None:
        self.events.append(dict(fields, event_id=len(self.events) + 1, type=kind,
                                time_ms=1_700_000_000_000 + len(self.events)))

    def complete(self, command: dict, result) -> None:
        self.add("TaskScheduled", key=command["key"], task=command["task"])
        self.add("TaskStarted", key=command["key"], attempt=1)
        self.add("TaskCompleted", key=command["key"], result=codec.pack(result))


def workflow_task(history: History, workflow_type: str, workflow_id="wf-1", attempt=1):
    return {"workflow_type": workflow_type, "workflow_id": workflow_id, "run_id": "run-1",
            "workflow_attempt": attempt, "start_time_ms": 1_700_000_000_000,
            "input": history.events[0]["input"], "history": list(history.events)}


def test_a_workflow_runs_to_completion_on_its_sticky_worker(flows_dir):
    async def body(pool, sup, types):
        history = History("pipeline", {"x": 5})
        first = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline"))
        [schedule] = first["commands"]
        assert (schedule["type"], schedule["task"], codec.unpack(schedule["args"])) == \
            ("ScheduleTask", "add", {"a": 5, "b": 1})
        assert schedule["options"]["retry"]["maximum_attempts"] == 0
        history.complete(schedule, 6)
        second = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline"))
        [schedule] = second["commands"]
        assert (schedule["task"], codec.unpack(schedule["args"])) == ("add_async", {"a": 6, "b": 10})
        history.complete(schedule, 16)
        third = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline"))
        return [first["cached"], second["cached"], third["cached"]], third["commands"]
    cached, [complete] = with_pool(flows_dir, body, workers=2)
    assert complete["type"] == "CompleteWorkflow"
    # body_starts == 1: the coroutine started once and was resumed, never replayed.
    assert codec.unpack(complete["result"]) == {"a": 6, "b": 16, "body_starts": 1}
    assert cached == [False, True, True]


def test_a_redelivered_dispatch_or_a_new_attempt_replays_instead_of_using_the_cache(flows_dir):
    async def body(pool, sup, types):
        history = History("pipeline", {"x": 1})
        [schedule] = (await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline")))["commands"]
        # Same history again (the completion never committed): the command must come again.
        again = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline"))
        history.complete(schedule, 2)
        retried = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline", attempt=2))
        return schedule, again, retried
    schedule, again, retried = with_pool(flows_dir, body)
    assert again["cached"] is False and again["commands"] == [schedule]
    assert retried["cached"] is False and retried["commands"][0]["task"] == "add_async"


def test_non_determinism_and_unknown_workflow_types_fail_the_workflow_task(flows_dir):
    async def body(pool, sup, types):
        history = History("pipeline", {"x": 1})
        history.add("TaskScheduled", key="#0", task="add_async")  # the code spawns "add" first
        diverged = await sup.run(pool, "workflow_task", **workflow_task(history, "pipeline"))
        unknown = await sup.run(pool, "workflow_task", **workflow_task(History("nope", {}), "nope"))
        return diverged["error"], unknown["error"]
    diverged, unknown = with_pool(flows_dir, body)
    assert diverged["type"] == "NonDeterminismError" and diverged["non_retryable"] is False
    assert "'add'" in diverged["message"] and "'add_async'" in diverged["message"]
    assert "deterministic" in diverged["message"] and "Traceback" in diverged["stack"]
    assert unknown["type"] == "UnknownWorkflowType" and "'pipeline'" in unknown["message"]


def test_workflow_failures_carry_the_retry_policy_and_payload_errors_are_final(flows_dir):
    async def body(pool, sup, types):
        bad = await sup.run(pool, "workflow_task", **workflow_task(History("unencodable", None),
                                                                   "unencodable"))
        raised = await sup.run(pool, "workflow_task", **workflow_task(History("raises", {}), "raises"))
        wrong_args = await sup.run(pool, "workflow_task", **workflow_task(
            History("pipeline", {"y": 1}), "pipeline"))
        return bad["commands"], raised["commands"], wrong_args["commands"]
    [bad], [raised], [wrong_args] = with_pool(flows_dir, body)
    assert bad["type"] == "FailWorkflow" and bad["error"]["type"] == "PayloadError"
    assert "workflow result can't be encoded" in bad["error"]["message"]
    assert bad["retry"]["maximum_attempts"] == 1 and "PayloadError" in bad["retry"]["non_retryable_errors"]
    assert raised["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}
    assert raised["retry"]["maximum_attempts"] == 4
    assert wrong_args["error"]["type"] == "TypeError" and wrong_args["retry"]["maximum_attempts"] == 1


# --- worker processes ------------------------------------------------------------------------------

def home_of(workflow_id_prefix: str, index: int, workers: int) -> str:
    return next(f"{workflow_id_prefix}-{n}" for n in range(1000)
                if pool_module.home_index(f"{workflow_id_prefix}-{n}", workers) == index)


def test_a_killed_worker_is_reported_restarted_and_used_again(flows_dir):
    async def body(pool, sup, types):
        hang_id = sup.submit(pool, "task", **task("hang"))  # idle pool: worker 0 takes it
        victim = codec.unpack((await sup.heartbeat_of(hang_id))["details"])
        assert victim == pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        died = (await sup.result(hang_id))["error"]
        # While worker 0 is down its workflows go to the next live worker.
        wf = workflow_task(History("pipeline", {"x": 1}), "pipeline", workflow_id=home_of("w", 0, 2))
        rerouted = await sup.run(pool, "workflow_task", **wf)
        assert rerouted["commands"][0]["task"] == "add"
        deadline = time.monotonic() + 10
        while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pids = pool.worker_pids()
        ran_on = codec.unpack((await sup.run(pool, "task", **task("whoami")))["result"])["pid"]
        return victim, died, pids, ran_on
    victim, died, pids, ran_on = with_pool(flows_dir, body, workers=2, restart_backoff_initial_s=0.3)
    assert died["type"] == "WorkerDied" and died["non_retryable"] is False
    assert died["message"] == f"worker pid {victim} exited with signal SIGKILL"
    assert len(pids) == 2 and victim not in pids
    assert ran_on == pids[0]  # the restarted worker 0 takes work again


@pytest.mark.parametrize("source, expected", [
    ("import coda\nraise RuntimeError('config missing: FLOWS_DSN')\n",
     "RuntimeError: config missing: FLOWS_DSN"),
    ("import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
    ("x = 1\n", "defines no @coda.workflow or @coda.task"),
])
def test_a_module_that_does_not_load_is_a_clear_error_from_start(tmp_path, source, expected):
    (tmp_path / "broken.py").write_text(source)
    with pytest.raises(WorkerStartError, match="can't load module broken") as info:
        with_pool(tmp_path, lambda *_: None, module="broken")
    assert expected in str(info.value)


def test_a_worker_that_exits_before_ready_is_reported_with_its_exit_code(tmp_path):
    with pytest.raises(WorkerStartError, match=r"exited with code \d+ before it was ready"):
        with_pool(tmp_path, lambda *_: None, module="flows", python="/bin/false")


def read_frame_blocking(stream) -> dict:
    (length,) = struct.unpack(">I", stream.read(4))
    return frames.decode_body(stream.read(length))


def test_a_worker_exits_at_once_when_its_stdin_ends(flows_dir):
    worker = subprocess.Popen([sys.executable, "-m", "coda.supervisor.worker", "flows"],
                              cwd=flows_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready = read_frame_blocking(worker.stdout)
        assert ready["op"] == "ready" and ready["pid"] == worker.pid
        worker.stdin.write(frames.encode_frame(dict(task("hang"), op="task", id="h")))
        worker.stdin.flush()
        assert read_frame_blocking(worker.stdout)["op"] == "heartbeat"  # it runs
        worker.stdin.close()  # the supervisor is gone: no waiting for the 60 s task
        assert worker.wait(timeout=5) == 0
    finally:
        worker.kill()
        worker.wait()
