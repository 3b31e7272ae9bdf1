"""Broadcast variables: how fast a new version reaches every supervisor, and what a cached
read costs against a linearizable read in Flow.

Starts its own 3-node cluster and --supervisors supervisors of one worker each; each
serves a task type of its own (so the benchmark knows which supervisor reads). Then:

- propagation: --updates sets of one variable, one after another; for each, the time from
  the set's acknowledgement until every supervisor's /health lists the new version
  (polled; the poll itself adds ~1 ms);
- reads inside a task on a worker (its cache, pushed by the supervisor) per second;
- baseline in the same run: linearizable `client.broadcast.get` and `set` latency, and
  linearizable reads per second from one client.

    python bench/bench_broadcast.py                 # ~30 s
    python bench/bench_broadcast.py --updates 500 --supervisors 4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import textwrap
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import coda  # noqa: E402
from harness import Cluster, SupervisorProcess  # noqa: E402

sys.path.insert(0, HERE)
from bench_execution import git_facts, save_report  # noqa: E402
from bench_timers import percentiles  # noqa: E402

MODULE = '''
import time

import coda


@coda.task(name="bench_bc_reads_{tag}")
async def reads(name, count):
    began = time.perf_counter()
    for _ in range(count):
        await coda.context.get_broadcast(name)
    return count / (time.perf_counter() - began)


@coda.workflow(name="bench_bc_{tag}")
async def bench_bc(name, count):
    return await coda.context.spawn_task(reads, args={{"name": name, "count": count}})
'''


def cached_version(supervisor: SupervisorProcess, name: str) -> int:
    url = f"http://127.0.0.1:{supervisor.health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            health = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        health = json.loads(exc.read())
    return ((health.get("broadcasts") or {}).get("versions") or {}).get(name, 0)


async def measure(address: str, supervisors: list, updates: int, reads: int) -> dict:
    name = "bench-bc"
    async with coda.Client(address, timeout_s=60.0) as client:
        await client.broadcast.set(name, {"n": 0})
        task_reads = []
        for tag, _ in supervisors:  # warms each supervisor's cache and watch
            handle = await client.start_workflow(f"bench_bc_{tag}", {"name": name,
                                                                     "count": reads})
            task_reads.append(await handle.result(timeout=60))
        propagation_ms, set_ms = [], []
        for n in range(1, updates + 1):
            began = time.monotonic()
            version = await client.broadcast.set(name, {"n": n})
            acked = time.monotonic()
            set_ms.append((acked - began) * 1000)
            for _, sup in supervisors:
                while await asyncio.to_thread(cached_version, sup, name) < version:
                    await asyncio.sleep(0.0005)
            propagation_ms.append((time.monotonic() - acked) * 1000)
        get_ms = []
        for _ in range(updates):
            began = time.monotonic()
            await client.broadcast.get(name)
            get_ms.append((time.monotonic() - began) * 1000)
        began = time.monotonic()
        await asyncio.gather(*(client.broadcast.get(name) for _ in range(reads // 10)))
        flow_reads_per_s = (reads // 10) / (time.monotonic() - began)
    return {"propagation_ms": percentiles(propagation_ms), "set_ms": percentiles(set_ms),
            "linearizable_get_ms": percentiles(get_ms),
            "worker_cache_reads_per_s": round(min(task_reads)),
            "linearizable_reads_per_s_one_client_concurrent": round(flow_reads_per_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--supervisors", type=int, default=3)
    parser.add_argument("--reads", type=int, default=20_000, help="reads in each task")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coda-bench-broadcast-") as root:
        cluster = Cluster(root, shards=args.shards)
        supervisors = []
        try:
            cluster.start()
            cluster.wait_leaders(timeout_s=60)
            for i in range(args.supervisors):
                tag = f"s{i}"
                module_dir = os.path.join(root, f"mod_{tag}")
                os.makedirs(module_dir)
                with open(os.path.join(module_dir, f"bench_bc_{tag}.py"), "w") as f:
                    f.write(textwrap.dedent(MODULE.format(tag=tag)))
                sup = SupervisorProcess(cluster, f"bench_bc_{tag}", root=root, workers=1,
                                        module_dir=module_dir, supervisor_id=f"bench-bc-{tag}")
                supervisors.append((tag, sup.start()))
            for _, sup in supervisors:
                sup.wait_connected(timeout_s=120)
            measured = asyncio.run(measure(cluster.address, supervisors, args.updates,
                                           args.reads))
        finally:
            for _, sup in supervisors:
                sup.close()
            cluster.close()
    report = {"benchmark": "broadcast variables", "settings": vars(args), "git": git_facts(),
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, **measured}
    p, s, g = measured["propagation_ms"], measured["set_ms"], measured["linearizable_get_ms"]
    cached = measured["worker_cache_reads_per_s"]
    flow = measured["linearizable_reads_per_s_one_client_concurrent"]
    print(f"new version on all {args.supervisors} supervisors after the ack: p50 {p['p50']} ms"
          f"  p99 {p['p99']} ms  max {p['max']} ms")
    print(f"baseline: set ack p50 {s['p50']} ms p99 {s['p99']} ms; linearizable get "
          f"p50 {g['p50']} ms p99 {g['p99']} ms")
    print(f"reads/s in a task (worker cache) {cached:,} vs linearizable from a client "
          f"{flow:,} ({cached / max(flow, 1):.0f}x)")
    print(f"saved {save_report(args.out, 'broadcast', report)}")


if __name__ == "__main__":
    main()
