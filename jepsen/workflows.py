"""The workflows and tasks the jepsen workloads run (the supervisor imports this module).

Every task execution appends one JSON line to the file named by $JEPSEN_EXEC_LOG, outside
the engine, with a single O_APPEND write (lines of concurrent workers never mix): that
log is what the checkers hold Flow's answers against (which attempts ran, when a timer's
workflow really resumed). Times there are CLOCK_MONOTONIC ns, which every process and
namespace on the machine shares and libfaketime leaves alone here (the clock nemesis
skews the nodes' wall clocks only).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import coda
from coda.client.task_context import current_task

EXEC_LOG_ENV = "JEPSEN_EXEC_LOG"
# Retries keep going through every fault window of a run (a task must not give up while
# a partition lasts), with a short backoff so recovery shows within the run.
PATIENT = coda.RetryPolicy(initial_interval=0.2, backoff_coefficient=2, maximum_interval=2,
                           maximum_attempts=1000)


def expected_result(workflow_id: str, step: str) -> str:
    """What step `step` of workflow `workflow_id` must return, whatever the attempt."""
    return hashlib.blake2b(f"{workflow_id}/{step}".encode(), digest_size=8).hexdigest()


def record(kind: str, **fields) -> None:
    line = json.dumps({"kind": kind, "mono_ns": time.monotonic_ns(), "pid": os.getpid(),
                       **fields}, separators=(",", ":"))
    fd = os.open(os.environ[EXEC_LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _executed(kind: str, **fields) -> None:
    info = current_task()
    record(kind, workflow_id=info.workflow_id, key=info.key, attempt=info.attempt, **fields)


# --- (a) starts and (b) task results: a few sequential steps -------------------------------

@coda.task(name="jp_step", retry=PATIENT)
def jp_step(workflow_id: str, step: str):
    _executed("exec", step=step)
    return expected_result(workflow_id, step)


@coda.workflow(name="jp_tasks", retry=PATIENT)
async def jp_tasks(steps: int = 3):
    workflow_id = coda.context.workflow_id()
    results = {}
    for i in range(steps):
        step = f"s{i}"
        results[step] = await coda.context.spawn_task(
            jp_step, args={"workflow_id": workflow_id, "step": step}, cache_key=[step])
    return results


# --- (d) queue: one delivery per enqueued item ----------------------------------------------

@coda.task(name="jp_deliver", retry=PATIENT)
def jp_deliver(item: str):
    _executed("dequeue", item=item)
    return item


@coda.workflow(name="jp_queue", retry=PATIENT)
async def jp_queue(item: str):
    return await coda.context.spawn_task(jp_deliver, args={"item": item}, cache_key=["d"])


# --- (e) timers: sleep, then note when the workflow really resumed ---------------------------

@coda.task(name="jp_fired", retry=PATIENT)
def jp_fired(timer: str):
    _executed("fired", timer=timer, wall_ms=int(time.time() * 1000))
    return timer


@coda.workflow(name="jp_timer", retry=PATIENT)
async def jp_timer(timer: str, delay_ms: int):
    await coda.context.sleep(delay_ms / 1000)
    return await coda.context.spawn_task(jp_fired, args={"timer": timer}, cache_key=["f"])


# --- (c) workflow state: a counter that only grows, one step per signal -----------------------

@coda.workflow(name="jp_counter", retry=PATIENT)
async def jp_counter(limit: int = 100_000):
    count = 0
    coda.context.set_state("n", count)
    while count < limit:
        signal = await coda.context.wait_signal("inc")
        if signal == "stop":
            break
        count += 1
        coda.context.set_state("n", count)
    return count
