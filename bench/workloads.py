"""The workflows and tasks bench/bench_execution.py runs (the supervisor imports this module).

Every task is trivial, so the benchmark measures Coda's own cost: dispatch, Raft commits,
history replay, the supervisor ⇄ worker hops and the completion path.
"""

import coda


@coda.task(name="bench_noop")
async def noop(i):
    return i


@coda.workflow(name="bench_seq")
async def seq(n=3):
    """n trivial tasks one after the other (W-seq: n = 3)."""
    total = 0
    for i in range(n):
        total += await coda.context.spawn_task(noop, args={"i": i})
    return total


@coda.workflow(name="bench_fan")
async def fan(n=200):
    """n trivial tasks spawned at once and awaited together (W-fan)."""
    results = await coda.context.await_all(
        [coda.context.spawn_task(noop, args={"i": i}) for i in range(n)])
    return len(results)


@coda.workflow(name="bench_one")
async def one():
    """One trivial task (W-lat)."""
    return await coda.context.spawn_task(noop, args={"i": 1})


WORKFLOW_TYPES = ["bench_seq", "bench_fan", "bench_one"]
TASK_TYPES = ["bench_noop"]


@coda.workflow(name="bench_sleep")
async def sleep(seconds=5.0):
    """One durable sleep (bench/bench_timers.py): the workflow holds no process meanwhile."""
    await coda.context.sleep(seconds)
    return seconds
