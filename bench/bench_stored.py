"""W-seq on a cluster that stores many completed workflows, against an empty one.

The performance issue's row "1M completed workflows stored: W-seq throughput within 10 %
of an empty cluster; <= 200 MiB RSS per node".

1. An empty 3-node cluster (4 shards) and one supervisor with 2 workers.
2. Seeding, outside Raft: for every shard, the real state machine (flow.applier) applies
   --stored workflows' commands into a scratch LMDB, as a replica would: a start whose
   first workflow task goes eagerly to a registered supervisor, then that workflow task's
   completion with CompleteWorkflow (history, visibility rows and request-dedup entries
   as a real run leaves them). The applied index is then reset to 0 and a compacting copy
   goes to each node's shard directory: all three replicas hold identical state and a
   Raft log that starts empty, as after restoring a snapshot. Shards are seeded by
   separate processes (one per core).
3. A second cluster on the seeded data, up beside the first. W-seq (--workflows in
   flight, 3 trivial tasks each) --repeat times on each, the two taking turns; each
   node's RSS after.

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


class Setup(bx.WorkloadCluster):
    """One cluster of the comparison (empty or seeded) and its supervisor."""

    def __init__(self, args, root: str, stored: int):
        super().__init__(root, args.shards, name="stored" if stored else "empty")
        self.label = self.name
        self.stored = stored
        self.out: dict = {"w_seq": []}
        self.root = root

    def start(self) -> None:
        if self.stored:
            print(f"seeding {self.stored} completed workflows into {self.cluster.shards} "
                  "shards x 3 replicas ...", flush=True)
            self.out["seed"] = seed(self.cluster, self.stored, self.root)
            print(f"  seeded in {self.out['seed']['seconds']} s", flush=True)
        super().start()


async def alternating_trials(args, setups: list[Setup]) -> None:
    """W-seq trials taking turns between the clusters (the other one idles meanwhile): a
    machine whose speed drifts (this shared host's does, by a third within an hour) then
    slows both sides alike, where all of one cluster's trials and then all of the other's
    compared two moments instead of two stores."""
    clients = [bx.coda.Client(s.cluster.address, timeout_s=args.timeout) for s in setups]
    try:
        for setup, client in zip(setups, clients):
            if setup.stored:  # the seeded runs are there, through the cluster's own reads
                for n in (0, setup.stored // 2, setup.stored - 1):
                    described = await client.describe_workflow(f"stored-{n}")
                    assert described["status"] == model.COMPLETED, described
            await bx.warm_up(client, args.timeout)
        for t in range(args.repeat):
            for setup, client in zip(setups, clients):
                print(f"{setup.label}: W-seq {args.workflows} x 3 tasks, trial "
                      f"{t + 1}/{args.repeat} ...", flush=True)
                pids = bx.coda_pids(setup.cluster, setup.supervisor)
                setup.out["w_seq"].append(await bx.w_seq(
                    client, args.workflows, f"{setup.label}-{t}", args.timeout, pids, 0.0,
                    setup.cluster, setup.supervisor))
    finally:
        for client in clients:
            await client.close()
    for setup in setups:
        runs = setup.out["w_seq"]
        setup.out["wf_per_s_median"] = round(statistics.median(r["wf_per_s"] for r in runs), 1)
        pids = bx.coda_pids(setup.cluster, setup.supervisor)
        setup.out["rss_mib"] = {f"n{i + 1}": rss_mib(pid) for i, pid in enumerate(pids["nodes"])}


def measure(*, stored: int, shards: int, workflows: int, repeat: int, timeout_s: float) -> dict:
    """Both clusters, up at once, their trials alternating; the report (not saved)."""
    args = argparse.Namespace(stored=stored, shards=shards, workflows=workflows,
                              repeat=repeat, timeout=timeout_s)
    with tempfile.TemporaryDirectory(prefix="coda-bench-empty-") as empty_root, \
            tempfile.TemporaryDirectory(prefix="coda-bench-stored-") as stored_root:
        setups = [Setup(args, empty_root, 0), Setup(args, stored_root, stored)]
        # Seeding first, on an otherwise idle machine.
        with bx.all_started(setups, start_order=setups[::-1]):
            asyncio.run(alternating_trials(args, setups))
    empty, seeded = setups[0].out, setups[1].out
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
