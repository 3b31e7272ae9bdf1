"""Durable timers: many workflows sleeping at once, and how late their timers fire.

Starts its own 3-node cluster and one supervisor with 2 workers (as bench_execution.py),
starts --sleepers workflows that each `await coda.context.sleep(--sleep)`, waits for all,
and reads every history: lateness = TimerFired.time_ms - TimerStarted.fire_at_ms (the
shard leader's clock; never negative by construction, checked), plus end-to-end lateness
at the client (result() returned - start acked - sleep). Baseline in the same process:
the same number of concurrent asyncio.sleep calls, their lateness on this machine.

    python bench/bench_timers.py                    # 1,000 sleepers of 5 s, ~1 minute
    python bench/bench_timers.py --sleepers 200 --sleep 2 --shards 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import coda  # noqa: E402
from harness import Cluster, SupervisorProcess  # noqa: E402

sys.path.insert(0, HERE)
from bench_execution import git_facts, save_report  # noqa: E402


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 2),
            "mean": round(statistics.fmean(ordered), 2), "n": len(ordered)}


async def asyncio_baseline(count: int, sleep_s: float) -> dict:
    async def one() -> float:
        due = time.monotonic() + sleep_s
        await asyncio.sleep(sleep_s)
        return (time.monotonic() - due) * 1000
    return percentiles(await asyncio.gather(*(one() for _ in range(count))))


async def sleepers(address: str, count: int, sleep_s: float, timeout_s: float) -> dict:
    gate = asyncio.Semaphore(128)
    async with coda.Client(address, timeout_s=60.0) as client:
        async def one(i: int) -> tuple[str, float]:
            async with gate:
                handle = await client.start_workflow("bench_sleep", {"seconds": sleep_s},
                                                     workflow_id=f"sleeper-{i}")
            acked = time.monotonic()
            await handle.result(timeout=timeout_s)
            return handle.workflow_id, (time.monotonic() - acked - sleep_s) * 1000

        began = time.monotonic()
        done = await asyncio.gather(*(one(i) for i in range(count)))
        wall_s = time.monotonic() - began
        timer_ms = []
        for workflow_id, _ in done:
            history = await client.workflow_history(workflow_id)
            [started] = [e for e in history if e["type"] == "TimerStarted"]
            fired = [e for e in history if e["type"] == "TimerFired"]
            assert len(fired) == 1, (workflow_id, fired)
            lateness = fired[0]["time_ms"] - started["fire_at_ms"]
            assert lateness >= 0, (workflow_id, lateness)  # never before its time
            timer_ms.append(lateness)
    return {"wall_s": round(wall_s, 2), "timer_lateness_ms": percentiles(timer_ms),
            "end_to_end_lateness_ms": percentiles([ms for _, ms in done])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleepers", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each one sleeps")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coda-bench-timers-") as root:
        cluster = Cluster(root, shards=args.shards)
        supervisor = SupervisorProcess(cluster, "workloads", root=root, workers=args.workers,
                                       module_dir=HERE, supervisor_id="bench-timers")
        try:
            cluster.start()
            cluster.wait_leaders(timeout_s=60)
            supervisor.start()
            supervisor.wait_connected(timeout_s=120)
            print(f"{args.sleepers} workflows sleeping {args.sleep} s ...", flush=True)
            measured = asyncio.run(sleepers(cluster.address, args.sleepers, args.sleep,
                                            args.timeout))
            baseline = asyncio.run(asyncio_baseline(args.sleepers, args.sleep))
        finally:
            supervisor.close()
            cluster.close()
    report = {"benchmark": "durable timers", "settings": vars(args), "git": git_facts(),
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
              **measured, "asyncio_sleep_lateness_ms": baseline}
    t, e = measured["timer_lateness_ms"], measured["end_to_end_lateness_ms"]
    print(f"timer lateness (leader clock)   p50 {t['p50']} ms  p99 {t['p99']} ms  max {t['max']} ms")
    print(f"end to end (client)             p50 {e['p50']} ms  p99 {e['p99']} ms  max {e['max']} ms")
    print(f"baseline asyncio.sleep          p50 {baseline['p50']} ms  p99 {baseline['p99']} ms")
    print(f"{args.sleepers} sleepers done in {measured['wall_s']} s")
    print(f"saved {save_report(args.out, 'timers', report)}")


if __name__ == "__main__":
    main()
