"""A workflow that continues as new --iterations times on a real cluster: iterations per
second, and the storage of its shard (LMDB entries per table, data file size) after the
first --warmup iterations and at the end, which must not grow with the iterations (the
request dedup window aside, bounded by its own limits).

Starts its own 3-node cluster and one supervisor with one worker. Baseline in the same
run: one-step workflows started one after another (per iteration the same work: a new run
and one workflow task). Storage is read from node 0's LMDB after the warm-up loop (one
workflow) and after the long loop (two workflows: each keeps 20 closed runs, however many
iterations it made).

    python bench/bench_continue_as_new.py                  # 10,000 iterations
    python bench/bench_continue_as_new.py --iterations 2000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import coda  # noqa: E402
from coda.storage import keys  # noqa: E402
from coda.storage.env import ShardStore  # noqa: E402
from harness import Cluster, SupervisorProcess  # noqa: E402

sys.path.insert(0, HERE)
from bench_execution import git_facts, save_report  # noqa: E402

MODULE = '''
import coda


@coda.workflow(name="bench_loop")
async def bench_loop(i, until):
    coda.context.set_state("i", i)
    if i < until:
        coda.context.continue_as_new({"i": i + 1, "until": until})
    return i


@coda.workflow(name="bench_once")
async def bench_once():
    return 1
'''


def shard_storage(cluster: Cluster, node: int) -> dict:
    """Entries per table and data file bytes, summed over the node's shards."""
    out: dict[str, int] = {"data_mdb_bytes": 0}
    for shard in range(cluster.shards):
        path = os.path.join(cluster.shard_dir(node, shard), "lmdb")
        out["data_mdb_bytes"] += os.path.getsize(os.path.join(path, "data.mdb"))
        store = ShardStore(path)
        try:
            with store.read() as txn:
                for db in keys.ALL_DBS:
                    out[db] = out.get(db, 0) + sum(1 for _ in txn.scan(db))
        finally:
            store.close()
    return out


async def loop(address: str, iterations: int) -> float:
    async with coda.Client(address, timeout_s=60.0) as client:
        began = time.monotonic()
        handle = await client.start_workflow("bench_loop", {"i": 0, "until": iterations},
                                             workflow_id=f"loop-{iterations}-{time.time_ns()}")
        assert await handle.result(timeout=3600) == iterations
        return time.monotonic() - began


async def baseline(address: str, count: int) -> float:
    async with coda.Client(address, timeout_s=60.0) as client:
        began = time.monotonic()
        for n in range(count):
            handle = await client.start_workflow("bench_once", workflow_id=f"once-{n}")
            await handle.result(timeout=60)
        return time.monotonic() - began


def stopped_storage(cluster: Cluster) -> dict:
    cluster.stop(0)
    try:
        return shard_storage(cluster, 0)
    finally:
        cluster.start(0)
        cluster.wait_leaders(timeout_s=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--baseline", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coda-bench-can-") as root:
        module_dir = os.path.join(root, "mod")
        os.makedirs(module_dir)
        with open(os.path.join(module_dir, "bench_can.py"), "w") as f:
            f.write(textwrap.dedent(MODULE))
        cluster = Cluster(os.path.join(root, "cluster"), shards=args.shards)
        supervisor = SupervisorProcess(cluster, "bench_can", root=root, workers=1,
                                       module_dir=module_dir, supervisor_id="bench-can")
        try:
            cluster.start()
            cluster.wait_leaders(timeout_s=60)
            supervisor.start()
            supervisor.wait_connected(timeout_s=120)
            warm_s = asyncio.run(loop(cluster.address, args.warmup))
            after_warmup = stopped_storage(cluster)
            supervisor.wait_connected(timeout_s=120)
            print(f"{args.iterations} iterations ...", flush=True)
            long_s = asyncio.run(loop(cluster.address, args.iterations))
            after_long = stopped_storage(cluster)
            supervisor.wait_connected(timeout_s=120)
            base_s = asyncio.run(baseline(cluster.address, args.baseline))
        finally:
            supervisor.close()
            cluster.close()
    report = {"benchmark": "continue-as-new", "settings": vars(args), "git": git_facts(),
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
              "iterations_per_s": round(args.iterations / long_s, 1),
              "warmup_iterations_per_s": round(args.warmup / warm_s, 1),
              "baseline_one_step_workflows_per_s": round(args.baseline / base_s, 1),
              "storage_node0_after_warmup_loop": after_warmup,
              "storage_node0_after_long_loop": after_long}
    print(f"continue-as-new: {report['iterations_per_s']} iterations/s over {args.iterations} "
          f"(baseline: {report['baseline_one_step_workflows_per_s']} one-step workflows/s "
          "started one after another)")
    for db in ("workflows", "runs", "history", "state", "requests", "data_mdb_bytes"):
        print(f"  {db:16s} after {args.warmup:>6}: {after_warmup[db]:>10}   after "
              f"{args.warmup}+{args.iterations}: {after_long[db]:>10}")
    print(f"saved {save_report(args.out, 'continue-as-new', report)}")


if __name__ == "__main__":
    main()
