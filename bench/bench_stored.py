"""W-seq on a cluster that stores many completed workflows, against an empty one.

The performance issue's row "1M completed workflows stored: W-seq throughput within 10 %
of an empty cluster; <= 200 MiB RSS per node".

1. An empty 3-node cluster (4 shards) and one supervisor with 2 workers: W-seq (--workflows
   in flight, 3 trivial tasks each) --repeat times; each node's RSS after.
2. Seeding, outside Raft: for every shard, the real state machine (flow.applier) applies
   --stored workflows' commands into a scratch LMDB, as a replica would: a start whose
   first workflow task goes eagerly to a registered supervisor, then that workflow task's
   completion with CompleteWorkflow (history, visibility rows and request-dedup entries
   as a real run leaves them). The applied index is then reset to 0 and a compacting copy
   goes to each node's shard directory: all three replicas hold identical state and a
   Raft log that starts empty, as after restoring a snapshot. Shards are seeded by
   separate processes (one per core).
3. A second cluster on the seeded data: the same W-seq trials and RSS.

    python bench/bench_stored.py                      # 1M stored: seeding ~5 min on 2 cores
    python bench/bench_stored.py --stored 100000 --repeat 1

Prints the table and saves bench/results/stored-<utc>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import os
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_execution as bx  # noqa: E402  (cluster helpers, W-seq, reports)

from coda.flow import commands, model  # noqa: E402
from coda.flow.applier import Applier  # noqa: E402
from coda.flow.sharding import shard_for  # noqa: E402
from coda.storage import codec  # noqa: E402
from coda.storage.env import LmdbOptions, ShardStore  # noqa: E402

STORED_TYPE = "bench_stored"
SEED_SUPERVISOR = "seed-supervisor"
SEED_COMMIT_EVERY = 64           # commands per LMDB transaction while seeding
RSS_TARGET_MIB = 200
THROUGHPUT_TOLERANCE = 0.10


# --- seeding -----------------------------------------------------------------------------

def seed_shard(shard: int, shard_count: int, stored: int, scratch: str) -> dict:
    """Apply the commands of the stored workflows of one shard; returns the LMDB path."""
    path = os.path.join(scratch, f"seed-{shard:03d}")
    store = ShardStore(path, LmdbOptions(sync=False, metasync=False))
    applier = Applier(store)
    index = 0
    # Stamped times step one ms per workflow, ending now: old request ids fall out of
    # the dedup window and cap exactly as they would have in a cluster that ran them.
    began_ms = int(time.time() * 1000) - stored

    def apply(data: bytes) -> dict:
        nonlocal index
        index += 1
        result = applier.apply(index, data)
        if "error" in result:
            raise RuntimeError(f"seeding shard {shard}: {result['error']}")
        if index % SEED_COMMIT_EVERY == 0:
            applier.commit()
        return result

    apply(commands.register_supervisor(time_ms=began_ms, supervisor_id=SEED_SUPERVISOR,
                                       build_id="", workflow_types=[STORED_TYPE],
                                       task_types=[], running=[]))
    result_payload = codec.pack({"ok": True})
    count = 0
    for n in range(stored):
        workflow_id = f"stored-{n}"
        if shard_for(workflow_id, shard_count) != shard:
            continue
        time_ms = began_ms + n
        run_id = uuid.UUID(int=n).hex
        started = apply(commands.start_workflow(
            request_id=f"seed-start-{n}", time_ms=time_ms, workflow_id=workflow_id,
            workflow_type=STORED_TYPE, input_payload=codec.pack({"n": n}), run_id=run_id,
            reuse_policy=model.ALLOW_DUPLICATE, allow_undeclared_type=True,
            eager={"supervisor_id": SEED_SUPERVISOR, "items": 1}))
        (item,) = started["effects"]["assigned"][0][2]
        apply(commands.complete(
            time_ms=time_ms, request_id=f"seed-done-{n}", workflow_id=workflow_id,
            run_id=run_id, key="", attempt=item["attempt"],
            outcome={"commands": [{"type": "CompleteWorkflow", "result": result_payload}]}))
        count += 1
    applier.commit()
    # The replicas' Raft logs start empty: their LMDB must say nothing is applied yet.
    store.begin_batch().commit(0)
    store.close()
    return {"shard": shard, "workflows": count, "path": path}


def seed(cluster: bx.Cluster, stored: int, scratch: str) -> dict:
    began = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        seeded = list(pool.map(seed_shard, range(cluster.shards), [cluster.shards] * cluster.shards,
                               [stored] * cluster.shards, [scratch] * cluster.shards))
    applied_s = time.monotonic() - began
    for one in seeded:
        source = ShardStore(one["path"], LmdbOptions(sync=False, metasync=False))
        for i in range(len(cluster.nodes)):
            dest = os.path.join(cluster.shard_dir(i, one["shard"]), "lmdb")
            source.copy_compact(dest)
        source.close()
    data_file = os.path.join(cluster.shard_dir(0, 0), "lmdb", "data.mdb")
    return {"workflows": sum(s["workflows"] for s in seeded),
            "seconds": round(time.monotonic() - began, 1), "apply_seconds": round(applied_s, 1),
            "shard_data_mib": round(os.path.getsize(data_file) / 2**20, 1)}


# --- measuring ---------------------------------------------------------------------------

def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def trials(args, cluster: bx.Cluster, supervisor: bx.SupervisorProcess, label: str,
                 stored: int) -> dict:
    pids = bx.coda_pids(cluster, supervisor)
    async with bx.coda.Client(cluster.address, timeout_s=args.timeout) as client:
        if stored:  # the seeded runs are there, through the cluster's own reads
            for n in (0, stored // 2, stored - 1):
                described = await client.describe_workflow(f"stored-{n}")
                assert described["status"] == model.COMPLETED, described
        await bx.warm_up(client, args.timeout)
        runs = []
        for t in range(args.repeat):
            print(f"{label}: W-seq {args.workflows} x 3 tasks, trial {t + 1}/{args.repeat} ...",
                  flush=True)
            runs.append(await bx.w_seq(client, args.workflows, f"{label}-{t}", args.timeout,
                                       pids, 0.0, cluster, supervisor))
    return {"w_seq": runs, "wf_per_s_median": round(statistics.median(r["wf_per_s"] for r in runs), 1),
            "rss_mib": {f"n{i + 1}": rss_mib(pid) for i, pid in enumerate(pids["nodes"])}}


def run_cluster(args, root: str, stored: int) -> dict:
    cluster = bx.Cluster(root, shards=args.shards)
    supervisor = bx.SupervisorProcess(cluster, "workloads", root=root, workers=2,
                                      module_dir=HERE, supervisor_id="bench-supervisor")
    out: dict = {}
    try:
        if stored:
            print(f"seeding {stored} completed workflows into {args.shards} shards x 3 "
                  "replicas ...", flush=True)
            out["seed"] = seed(cluster, stored, root)
            print(f"  seeded in {out['seed']['seconds']} s", flush=True)
        cluster.start()
        cluster.wait_leaders(timeout_s=120)
        supervisor.start()
        supervisor.wait_connected(timeout_s=120)
        out.update(asyncio.run(trials(args, cluster, supervisor, "stored" if stored else "empty",
                                      stored)))
    finally:
        supervisor.close()
        cluster.close()
    return out


def measure(*, stored: int, shards: int, workflows: int, repeat: int, timeout_s: float) -> dict:
    """Both clusters; the report (without saving it)."""
    args = argparse.Namespace(stored=stored, shards=shards, workflows=workflows,
                              repeat=repeat, timeout=timeout_s)
    with tempfile.TemporaryDirectory(prefix="coda-bench-empty-") as root:
        empty = run_cluster(args, root, 0)
    with tempfile.TemporaryDirectory(prefix="coda-bench-stored-") as root:
        seeded = run_cluster(args, root, stored)
    return {"benchmark": "stored workflows", "settings": vars(args),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "git": bx.git_facts(), "empty": empty, "stored": seeded,
            "w_seq_stored_to_empty": bx.ratio(seeded["wf_per_s_median"], empty["wf_per_s_median"]),
            "targets": {"w_seq_ratio_min": 1 - THROUGHPUT_TOLERANCE, "rss_mib_max": RSS_TARGET_MIB}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    began = time.monotonic()
    report = measure(stored=args.stored, shards=args.shards, workflows=args.workflows,
                     repeat=args.repeat, timeout_s=args.timeout)
    report["settings"]["out"] = args.out
    empty, stored, ratio = report["empty"], report["stored"], report["w_seq_stored_to_empty"]
    print()
    print(f"{'what':44}{'empty':>14}{'stored':>14}   target")
    print(f"{'W-seq wf/s (median of ' + str(args.repeat) + ')':44}"
          f"{empty['wf_per_s_median']:>14}{stored['wf_per_s_median']:>14}   stored >= "
          f"{1 - THROUGHPUT_TOLERANCE:.0%} of empty (measured {ratio})")
    for node in empty["rss_mib"]:
        print(f"{'RSS MiB ' + node:44}{empty['rss_mib'][node]!s:>14}"
              f"{stored['rss_mib'][node]!s:>14}   <= {RSS_TARGET_MIB}")
    print(f"seeded {stored['seed']['workflows']} workflows in {stored['seed']['seconds']} s; "
          f"one shard's LMDB {stored['seed']['shard_data_mib']} MiB")
    path = bx.save_report(args.out, "stored", report)
    print(f"saved {path} ({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
