"""The workloads the jepsen client runs, each with the ops its checker reads.

- workflows (checkers a, b): start `jp_tasks` runs (3 sequential tasks each, results
  known in advance) under REJECT_DUPLICATE; read finished results during the run; at the
  end wait for every start that may have happened, then `final` (status, run id),
  `result` and `completed` (the attempt each TaskCompleted names) per workflow.
- queue (d): `enqueue` = start a `jp_queue` run for the item; its task's executions are
  the dequeues (from the exec log); at the end wait for every enqueue to be delivered.
- timers (e): `start-timer` = start a `jp_timer` run sleeping delay_ms; when it wakes its
  task logs the time (exec log); at the end `final-timer` counts TimerFired events.
- register (c): a versioned register per broadcast variable: `write`, `read`, `cas`
  (set with if_version); linearizable per key.
- counter (c): `jp_counter` runs count the "inc" signals they took in their state "n";
  clients `inc` and `read`: reads must never go back in time (monotonic).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from jepsen.client import Recorder, call

PAUSE_S = (0.02, 0.12)  # between one process's operations


async def _pause(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(*PAUSE_S))


class Workload:
    name = ""
    processes = 2

    def __init__(self, cfg: dict, seed: int, base_process: int):
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.base = base_process
        self.tag = f"{cfg['run_tag']}-{self.name}"

    async def run(self, client, rec: Recorder, deadline: float) -> None:
        await self.setup(client, rec)
        await asyncio.gather(*(self._loop(client, rec, self.base + p, deadline)
                               for p in range(self.processes)))

    async def _loop(self, client, rec, process: int, deadline: float) -> None:
        n = 0
        rng = random.Random(self.rng.randrange(2**32))
        while time.monotonic() < deadline:
            await self.step(client, rec, process, n, rng)
            n += 1
            await _pause(rng)

    async def setup(self, client, rec) -> None:
        pass

    async def step(self, client, rec, process: int, n: int, rng) -> None:
        raise NotImplementedError

    async def final(self, client, rec, deadline: float) -> None:
        pass


async def _settle(client, workflow_id: str, deadline: float) -> dict | None:
    """The workflow's description once it closed (None: not started, or still running at
    the deadline)."""
    from coda.errors import CodaError, NotFound
    while time.monotonic() < deadline:
        try:
            info = await client.get_workflow_handle(workflow_id).wait_closed(
                timeout=max(0.5, min(10.0, deadline - time.monotonic())))
            if info["status"] != "RUNNING":
                return info
        except NotFound:
            return None
        except CodaError:
            await asyncio.sleep(0.5)
    return None


class Starts(Workload):
    """Starts of workflow type `workflow_type`; `started` holds ids that may exist."""
    workflow_type = ""
    start_f = "start"

    def __init__(self, *args):
        super().__init__(*args)
        self.started: dict[str, str | None] = {}  # id -> acknowledged run id or None (info)

    def args_for(self, workflow_id: str, rng) -> dict:
        return {}

    async def start(self, client, rec, process, workflow_id, args, key=None) -> None:
        from coda.flow import model
        request_id = uuid.uuid4().hex
        kind, result = await call(
            rec, process, self.name, self.start_f, key or workflow_id, args,
            lambda: client.start_workflow(self.workflow_type, args, workflow_id=workflow_id,
                                          reuse_policy=model.REJECT_DUPLICATE,
                                          request_id=request_id),
            answer=lambda handle: {"run_id": handle.run_id})
        if kind != "fail":
            self.started[workflow_id] = result.run_id if kind == "ok" else None

    async def settle_all(self, client, deadline: float) -> dict[str, dict | None]:
        gate = asyncio.Semaphore(16)

        async def one(wid):
            async with gate:
                return wid, await _settle(client, wid, deadline)
        return dict(await asyncio.gather(*(one(w) for w in self.started)))


class Workflows(Starts):
    name = "workflows"
    processes = 3
    workflow_type = "jp_tasks"

    def __init__(self, *args):
        super().__init__(*args)
        self.done: list[str] = []
        self._noting: set[asyncio.Task] = set()

    async def step(self, client, rec, process, n, rng) -> None:
        if self.done and rng.random() < 0.3:
            wid = rng.choice(self.done)
            await self._read_result(client, rec, process, wid)
            return
        wid = f"{self.tag}-{process}-{n}"
        await self.start(client, rec, process, wid, {"steps": 3})
        if len(self.started) % 4 == 0:  # a sample of runs to read results of later
            task = asyncio.ensure_future(self._note_done(client, wid))
            self._noting.add(task)  # a reference, or the task may be collected mid-way
            task.add_done_callback(self._noting.discard)

    async def _note_done(self, client, wid: str) -> None:
        if await _settle(client, wid, time.monotonic() + 30) is not None:
            self.done.append(wid)

    async def _read_result(self, client, rec, process, wid: str) -> None:
        from jepsen.workflows import expected_result
        await call(rec, process, self.name, "result", wid, None,
                   lambda: client.get_workflow_handle(wid).result(timeout=5),
                   answer=lambda result: {"results": result, "expected": {
                       s: expected_result(wid, s) for s in result}})

    async def final(self, client, rec, deadline: float) -> None:
        closed = await self.settle_all(client, deadline)
        process = self.base + 99
        for wid, info in closed.items():
            if info is None:
                await call(rec, process, self.name, "final", wid, None,
                           lambda: _describe_or_absent(client, wid))
                continue
            rec.write(process, "invoke", self.name, "final", wid, None)
            # No run count: under REJECT_DUPLICATE a second run can only show as another
            # current run id, which the checker flags (run-changed).
            rec.write(process, "ok", self.name, "final", wid, {
                "status": info["status"], "run_id": info["run_id"]})
            if info["status"] == "COMPLETED":
                await self._read_result(client, rec, process, wid)
            await self._completed(client, rec, process, wid)

    async def _completed(self, client, rec, process, wid: str) -> None:
        events = await client.workflow_history(wid)
        for e in events:
            if e["type"] == "TaskCompleted":
                rec.write(process, "invoke", self.name, "completed", wid, None)
                rec.write(process, "ok", self.name, "completed", wid, {
                    "workflow_id": wid, "key": e["key"], "attempt": e["attempt"]})


async def _describe_or_absent(client, wid: str) -> dict:
    from coda.errors import NotFound
    try:
        info = await client.describe_workflow(wid)
    except NotFound:
        return {"status": None, "run_id": None, "runs": 0}
    return {"status": info["status"], "run_id": info["run_id"]}


class Queue(Starts):
    name = "queue"
    processes = 2
    workflow_type = "jp_queue"
    start_f = "enqueue"

    async def step(self, client, rec, process, n, rng) -> None:
        item = f"{self.tag}-{process}-{n}"
        await self.start(client, rec, process, item, {"item": item})

    async def final(self, client, rec, deadline: float) -> None:
        await self.settle_all(client, deadline)  # every delivery has happened (or never will)


class Timers(Starts):
    name = "timers"
    processes = 2
    workflow_type = "jp_timer"
    start_f = "start-timer"

    async def step(self, client, rec, process, n, rng) -> None:
        timer = f"{self.tag}-{process}-{n}"
        await self.start(client, rec, process, timer,
                         {"timer": timer, "delay_ms": rng.randint(100, 3000)})

    async def final(self, client, rec, deadline: float) -> None:
        closed = await self.settle_all(client, deadline)
        process = self.base + 99
        for timer, info in closed.items():
            if info is None and self.started.get(timer) is None:
                continue  # an unknown start that never closed: nothing to count
            events = await client.workflow_history(timer)
            started = [e for e in events if e["type"] == "TimerStarted"]
            fired = [e["time_ms"] for e in events if e["type"] == "TimerFired"]
            # read_wall_ms: a timer still due later than this (a fast leader clock set
            # fire_at_ms far ahead) is pending at the end, not lost.
            value = {"fired": len(fired), "fired_ms": fired,
                     "read_wall_ms": int(time.time() * 1000)}
            if started:  # the leader's clock: when it started the timer, when it was due
                value.update(fire_at_ms=started[0]["fire_at_ms"], started_ms=started[0]["time_ms"])
            rec.write(process, "invoke", self.name, "final-timer", timer, None)
            rec.write(process, "ok", self.name, "final-timer", timer, value)


class Register(Workload):
    name = "register"
    processes = 4
    keys = 4

    def __init__(self, *args):
        super().__init__(*args)
        self.seen: dict[tuple[int, str], int] = {}  # (process, key) -> last version it saw

    async def step(self, client, rec, process, n, rng) -> None:
        key = f"{self.tag}-k{rng.randrange(self.keys)}"
        roll, value = rng.random(), process * 1_000_000 + n
        if roll < 0.5:
            kind, got = await call(rec, process, self.name, "read", key, None,
                                   lambda: _read_register(client, key))
            if kind == "ok":
                self.seen[(process, key)] = got["version"]
        elif roll < 0.8:
            await call(rec, process, self.name, "write", key, value,
                       lambda: client.broadcast.set(key, value), answer=lambda v: {"version": v})
        else:  # CAS from the version this process last read: succeeds unless raced
            expect = self.seen.get((process, key), 0)
            await call(rec, process, self.name, "cas", key,
                       {"expect_version": expect, "new": value},
                       lambda: client.broadcast.set(key, value, if_version=expect),
                       answer=lambda v: {"version": v})


async def _read_register(client, key: str) -> dict:
    from coda.errors import NotFound
    try:
        version, value = await client.broadcast.get_versioned(key)
    except NotFound as exc:
        return {"value": None, "version": (exc.details or {}).get("version", 0)}
    return {"value": value, "version": version}


class Counter(Workload):
    name = "counter"
    processes = 3
    counters = 2

    async def setup(self, client, rec) -> None:
        for c in range(self.counters):
            wid = f"{self.tag}-c{c}"
            await call(rec, self.base + 90, self.name, "start", wid, None,
                       lambda: client.start_workflow("jp_counter", {}, workflow_id=wid),
                       answer=lambda handle: {"run_id": handle.run_id})

    async def step(self, client, rec, process, n, rng) -> None:
        wid = f"{self.tag}-c{rng.randrange(self.counters)}"
        if rng.random() < 0.4:
            await call(rec, process, self.name, "inc", wid, None,
                       lambda: client.signal_workflow(wid, "inc", "inc"), answer=lambda _: None)
        else:
            await call(rec, process, self.name, "read", wid, None,
                       lambda: client.get_workflow_state(wid, "n", default=0))


KINDS = {w.name: w for w in (Workflows, Queue, Timers, Register, Counter)}


def make(name: str, cfg: dict, seed: int, base_process: int) -> Workload:
    return KINDS[name](cfg, seed, base_process)
