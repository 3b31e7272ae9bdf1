"""The performance issue's table in one run: every row, the raw ceilings, JSON and plots.

1. Raw ceilings on this machine, in this run (bench/raw_ceilings.py): pysyncobj commits/s
   (three processes, Flow's durable journal), LMDB write transactions/s with Flow's sync
   options, gRPC unary round trips/s.
2. For each `--shards` count: a 3-node cluster (`coda-flow serve` processes) and one
   supervisor with 2 worker processes (bench/workloads.py), then
   - W-seq at each `--concurrency` (that many workflows of 3 sequential trivial tasks in
     flight at once): workflows/s, p50/p99, CPU ms per workflow over every Coda process;
   - W-lat: `--lat-count` single-task workflows one after another, p50/p99;
   - W-fan: one workflow fanning out `--fan` tasks, seconds (median of 3).
3. Failover: on the last cluster, W-seq load runs while the node leading shard 0 is
   killed with SIGKILL; the time from the kill to the next acknowledged command on shard
   0 (a start, probed every 20 ms through the surviving nodes). The node is restarted and
   every workflow of the load must still complete.
4. Baseline: two clusters of `--baseline-shards`, side by side, trials alternating: one
   as usual, one with raft.replicate_write_sets off (every
   replica re-runs every command, as before flow.speculation), W-seq and W-lat: the
   write-set path's ratios against it.
5. Stored workflows (bench/bench_stored.py): W-seq on an empty cluster of the largest
   shard count and on one whose replicas were seeded with `--stored` completed workflows
   through the state machine, side by side, trials alternating; the throughput ratio and
   each node's RSS.

Writes bench/results/perf-<utc>.json and perf-<utc>-{throughput,latency}.png.

    python bench/bench_perf.py                                  # ~4 minutes
    python bench/bench_perf.py --shards 4 --concurrency 500 --no-failover --stored 0  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_execution as bx  # noqa: E402  (the phases, CPU meter and cluster helpers)
import bench_stored  # noqa: E402
import raw_ceilings  # noqa: E402
from coda.flow.cli import dev_shards_default  # noqa: E402
import coda  # noqa: E402
import workloads  # noqa: E402

PROBE_PERIOD_S = 0.02
PROBES_IN_FLIGHT_MAX = 500
FAILOVER_TARGET_S = 3.0


async def _probe_until_commit(probe, probe_ids, killed_s: float) -> tuple[float | None, str, int]:
    """A start every PROBE_PERIOD_S, each left in flight (a probe that went to the dead
    leader waits out its timeout; sequential probes would measure that wait): the time
    from the kill to the first acknowledgement, the last error seen, probes sent."""
    first_ok_s, last_error, tasks, sent = None, None, set(), 0

    async def one() -> None:
        nonlocal first_ok_s, last_error
        try:
            await asyncio.wait_for(probe.start_workflow(
                bx.UNDECLARED_TYPE, {}, workflow_id=next(probe_ids),
                allow_undeclared_type=True), 10.0)
            acked_s = time.perf_counter() - killed_s
            first_ok_s = acked_s if first_ok_s is None else min(first_ok_s, acked_s)
        except (coda.CodaError, TimeoutError) as exc:
            last_error = getattr(exc, "code", None) or type(exc).__name__

    while first_ok_s is None and time.perf_counter() - killed_s < 30:
        if len(tasks) < PROBES_IN_FLIGHT_MAX:
            sent += 1
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(PROBE_PERIOD_S)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return first_ok_s, last_error, sent


async def failover(cluster: bx.Cluster, load_workflows: int, timeout_s: float) -> dict:
    """Kill -9 the leader of shard 0 under W-seq load; time to the next commit there."""
    shard = 0
    probe_ids = iter(cluster.ids_by_shard("failover-probe", 2000)[shard])
    victim = await asyncio.to_thread(cluster.leader_node, shard)
    survivors = [i for i in range(len(cluster.nodes)) if i != victim]
    results: dict = {"victim_node": victim, "shard": shard}
    async with coda.Client(cluster.address, timeout_s=timeout_s) as client, \
            coda.Client(cluster.address_of(survivors), timeout_s=5.0) as probe:
        handles = await asyncio.gather(*(
            client.start_workflow(workloads.seq, {"n": bx.SEQ_TASKS}, workflow_id=f"fo-{i}")
            for i in range(load_workflows)))
        await asyncio.sleep(0.5)  # the load is running
        killed_s = time.perf_counter()
        cluster.kill(victim)
        first_ok_s, last_error, attempts = await _probe_until_commit(probe, probe_ids, killed_s)
        results.update(next_commit_s=round(first_ok_s, 3) if first_ok_s else None,
                       probes_sent=attempts, last_probe_error=last_error,
                       new_leader_node=await asyncio.to_thread(cluster.leader_node, shard)
                       if first_ok_s else None)
        cluster.start(victim)
        outcomes = await asyncio.gather(*(h.result(timeout=timeout_s) for h in handles),
                                        return_exceptions=True)
        failed = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        results.update(load_workflows=load_workflows, load_completed=len(outcomes) - len(failed),
                       load_failures=failed[:5])
    return results


async def measure_cluster(args, cluster, supervisor, shards: int) -> dict:
    out: dict = {"shards": shards, "w_seq": [], "failover": None}
    async with coda.Client(cluster.address, timeout_s=60.0) as client:
        await bx.warm_up(client, args.timeout)
        pids = bx.coda_pids(cluster, supervisor)
        out["idle"] = await bx.idle_cpu(pids, 2.0)
        for concurrency in args.concurrency:
            # A W-seq phase lasts a second or two; single runs here vary by +-15 %, so the
            # table takes the median of --seq-repeat trials (all are in the JSON).
            trials = []
            speed = raw_ceilings.reference_loop_ms(runs=3)
            for r in range(args.seq_repeat):
                print(f"  W-seq, {concurrency} in flight, trial {r + 1}/{args.seq_repeat} ...",
                      flush=True)
                trials.append(await bx.w_seq(client, concurrency,
                                             f"seq-{shards}-{concurrency}-{r}", args.timeout,
                                             pids, out["idle"]["cores_busy"], cluster,
                                             supervisor))
            trial = bx.median_trial(trials, "wf_per_s")
            trial["cpu_ms_per_wf_trials"] = [t["cpu_ms_per_wf"] for t in trials]
            trial["concurrency"] = concurrency
            # The reference loop beside each row, not only at the run's ends (within one
            # run it went from 83 to 44 ms). One thread: it misses slowness that only
            # shows with both cores busy, so read rows beside the raw ceilings too.
            trial["reference_loop"] = speed
            out["w_seq"].append(trial)
        print(f"  W-lat, {args.lat_count} in a row ...", flush=True)
        speed = raw_ceilings.reference_loop_ms(runs=3)
        out["w_lat"] = await bx.w_lat(client, args.lat_count, f"lat-{shards}", args.timeout)
        out["w_lat"]["reference_loop"] = speed
        print(f"  W-fan, {args.fan} tasks ...", flush=True)
        out["w_fan"] = await bx.w_fan(client, args.fan, 3, f"fan-{shards}", args.timeout)
    return out


def run_baseline_pair(args) -> dict:
    """Both clusters up at once and their trials taking turns: measured one after the
    other, the ratio compared two moments of this drifting machine (x1.21, x1.08 and
    x0.99 in three runs of one build) rather than two replication modes."""
    shards = args.baseline_shards
    with tempfile.TemporaryDirectory(prefix="coda-bench-ws-") as root_ws, \
            tempfile.TemporaryDirectory(prefix="coda-bench-cmd-") as root_cmd:
        sides = [bx.WorkloadCluster(root_ws, shards, name="write_sets"),
                 bx.WorkloadCluster(root_cmd, shards, name="commands",
                                    raft={"replicate_write_sets": False})]
        print(f"baseline pair ({shards} shards): write sets and commands, side by side ...",
              flush=True)
        with bx.all_started(sides):
            out = asyncio.run(_alternate(args, sides))
    return {"shards": shards, **out}


async def _alternate(args, sides: list) -> dict:
    concurrency = max(args.concurrency)
    clients = [coda.Client(s.cluster.address, timeout_s=60.0) for s in sides]
    seq: dict[str, list] = {s.name: [] for s in sides}
    lat: dict[str, dict] = {}
    try:
        for client in clients:
            await bx.warm_up(client, args.timeout)
        for r in range(args.seq_repeat):
            for side, client in zip(sides, clients):
                print(f"  {side.name}: W-seq, {concurrency} in flight, trial "
                      f"{r + 1}/{args.seq_repeat} ...", flush=True)
                seq[side.name].append(await bx.w_seq(
                    client, concurrency, f"base-{side.name}-{r}", args.timeout,
                    bx.coda_pids(side.cluster, side.supervisor), 0.0, side.cluster,
                    side.supervisor))
        for side, client in zip(sides, clients):
            print(f"  {side.name}: W-lat, {args.lat_count} in a row ...", flush=True)
            lat[side.name] = await bx.w_lat(client, args.lat_count, f"base-lat-{side.name}",
                                            args.timeout)
    finally:
        for client in clients:
            await client.close()
    return {s.name: {"w_seq": bx.median_trial(seq[s.name], "wf_per_s"), "w_lat": lat[s.name]}
            for s in sides}


def run_cluster(args, shards: int, with_failover: bool, raft: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="coda-bench-perf-") as root:
        bench = bx.WorkloadCluster(root, shards, raft=raft)
        try:
            print(f"{shards} shard(s){' ' + str(raft) if raft else ''}: starting 3 nodes "
                  "and a supervisor ...", flush=True)
            bench.start()
            result = asyncio.run(measure_cluster(args, bench.cluster, bench.supervisor, shards))
            if with_failover:
                print("  failover: kill -9 of shard 0's leader under W-seq ...", flush=True)
                result["failover"] = asyncio.run(failover(bench.cluster, args.failover_load,
                                                          args.timeout))
        finally:
            bench.close()
    return result


# --- report ----------------------------------------------------------------------------------

def table_rows(report: dict) -> list[tuple[str, str, str, str]]:
    raw = report["ceilings"]
    by_shards = {c["shards"]: c for c in report["clusters"]}
    # The headline rows: the shard count `coda-flow dev` runs on this machine (one per
    # core, at most 4), if measured; the others are in the sweep rows below.
    main = by_shards.get(dev_shards_default()) or by_shards[max(by_shards)]
    seq = max(main["w_seq"], key=lambda t: t["concurrency"])
    lat, fan = main["w_lat"], main["w_fan"]
    fo_cluster = next((c for c in report["clusters"] if c.get("failover")), None)
    fo = fo_cluster and fo_cluster["failover"]
    ref, ref_end = raw.get("reference_loop"), raw.get("reference_loop_at_end")
    rows = [
        ("reference Python loop (machine speed)",
         f"{ref['best_ms']} ms" if ref else "-", "-",
         "best of 5 at the start; at the end " + (f"{ref_end['best_ms']} ms" if ref_end else "-")
         + " (the same work each time: lower is a faster machine, figures move with it)"),
        ("raw pysyncobj commits/s", f"{raw['pysyncobj_durable']['commits_per_s']:.0f}", "-",
         f"3 processes, durable journal, {raw['pysyncobj_durable']['in_flight']} in flight, "
         f"p50 {raw['pysyncobj_durable']['p50_ms']:.1f} ms"),
        ("raw LMDB write txn/s", f"{raw['lmdb']['write_txn_per_s']}", "-",
         f"fdatasync per commit; reads {raw['lmdb']['read_txn_per_s']}/s"),
        ("raw gRPC round trips/s", f"{raw['grpc']['round_trips_per_s']}", "-",
         f"{raw['grpc']['concurrency']} in flight; one at a time p50 "
         f"{raw['grpc']['sequential_p50_ms']} ms"),
        (f"W-seq {seq['concurrency']} x 3 tasks ({main['shards']} shards)",
         f"{seq['wf_per_s']} wf/s", ">= 500",
         f"median of {seq['trials']} (range {seq['wf_per_s_range'][0]}-"
         f"{seq['wf_per_s_range'][1]}); p50 {seq['p50_ms']} ms, p99 {seq['p99_ms']} ms; "
         f"{seq['flow_per_wf']['raft_entries']} Raft entries per workflow" + _speed(seq)),
        (f"W-fan {fan['fan']} tasks", f"{fan['seconds']} s", "<= 0.3",
         f"runs {fan['all_seconds']}"),
        (f"W-lat ({lat['workflows']} in a row)", f"p50 {lat['p50_ms']} / p99 {lat['p99_ms']} ms",
         "<= 10 / 30", bx.start_ack(lat) + _speed(lat)),
        ("CPU per W-seq workflow", f"{seq['cpu_ms_per_wf']} ms", "<= 3",
         "nodes {nodes} s, supervisor {supervisor} s, workers {workers} s".format(**seq["cpu_s"])
         + f"; all trials {seq['cpu_ms_per_wf_trials']} ms; the bench's client "
         f"{seq['client_cpu_ms_per_wf']} ms/wf"),
    ]
    best_shards, best = max(((c["shards"], t) for c in report["clusters"] for t in c["w_seq"]
                             if t["concurrency"] == seq["concurrency"]),
                            key=lambda st: st[1]["wf_per_s"])
    if best_shards != main["shards"]:
        rows.append((f"W-seq {seq['concurrency']}, best shard count ({best_shards})",
                     f"{best['wf_per_s']} wf/s", ">= 500",
                     f"{best['cpu_ms_per_wf']} ms CPU/wf; p50 {best['p50_ms']} ms"))
    base = report.get("baseline")
    if base:
        same, b_seq = base["write_sets"]["w_seq"], base["commands"]["w_seq"]
        rows.append((f"baseline: followers re-run commands ({base['shards']} shards, "
                     f"{b_seq['workflows']} in flight, trials alternating)",
                     f"x{bx.ratio(same['wf_per_s'], b_seq['wf_per_s'])} wf/s, "
                     f"x{bx.ratio(same['cpu_ms_per_wf'], b_seq['cpu_ms_per_wf'])} CPU/wf",
                     "-", f"write sets {same['wf_per_s']} wf/s, {same['cpu_ms_per_wf']} ms/wf "
                     f"against commands {b_seq['wf_per_s']} wf/s, {b_seq['cpu_ms_per_wf']} "
                     f"ms/wf (medians of {same['trials']}); W-lat p50 "
                     f"{base['write_sets']['w_lat']['p50_ms']} against "
                     f"{base['commands']['w_lat']['p50_ms']} ms"))
    stored = report.get("stored")
    if stored:
        rss = max(v for v in stored["stored"]["rss_mib"].values() if v is not None)
        rows.append((f"{stored['stored']['seed']['workflows']:,} completed workflows stored",
                     f"x{stored['w_seq_stored_to_empty']} of empty; RSS max {rss} MiB",
                     "within 10 %, <= 200 MiB",
                     f"W-seq {stored['stored']['wf_per_s_median']} against "
                     f"{stored['empty']['wf_per_s_median']} wf/s ({stored['settings']['shards']} "
                     f"shards, median of {stored['settings']['repeat']})"))
    else:
        rows.append(("1M completed workflows stored", "not measured (--stored 0)",
                     "within 10 %, <= 200 MiB", ""))
    if fo:
        rows.append((f"kill -9 of shard 0's leader under W-seq ({fo_cluster['shards']} shards)",
                     f"{fo['next_commit_s']} s to next commit", f"<= {FAILOVER_TARGET_S:g} s",
                     f"{fo['load_completed']}/{fo['load_workflows']} workflows of the load "
                     "completed"))
    for shards, cluster in sorted(by_shards.items()):
        for t in cluster["w_seq"]:
            rows.append((f"  sweep: {shards} shard(s), {t['concurrency']} in flight",
                         f"{t['wf_per_s']} wf/s", "-",
                         f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, {t['cpu_ms_per_wf']} ms "
                         "CPU/wf" + _speed(t)))
    return rows


def _speed(measured: dict) -> str:
    """The reference loop taken just before a row's workload (runs from before it was
    taken have none)."""
    speed = measured.get("reference_loop")
    return f"; reference loop {speed['best_ms']} ms just before" if speed else ""


def print_table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = ("what", "measured", "target")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  notes")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])


def plot(report: dict, stem: str) -> list[str]:
    """Throughput and latency versus concurrency, one line per shard count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed (pip install -e '.[bench]'): no plots",
              file=sys.stderr)
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in report["clusters"]:
        xs = [t["concurrency"] for t in c["w_seq"]]
        ax.plot(xs, [t["wf_per_s"] for t in c["w_seq"]], marker="o", label=f"{c['shards']} shard(s)")
    ax.axhline(500, linestyle="--", color="grey", label="target 500 wf/s")
    ax.set(xlabel="workflows in flight", ylabel="W-seq workflows/s", title="W-seq throughput")
    ax.legend()
    fig.tight_layout()
    paths.append(f"{stem}-throughput.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for c in report["clusters"]:
        xs = [t["concurrency"] for t in c["w_seq"]]
        left.plot(xs, [t["p50_ms"] for t in c["w_seq"]], marker="o", label=f"{c['shards']} p50")
        left.plot(xs, [t["p99_ms"] for t in c["w_seq"]], marker="x", linestyle=":",
                  label=f"{c['shards']} p99")
    left.set(xlabel="workflows in flight", ylabel="ms, start -> result",
             title="W-seq latency by shard count")
    left.legend(fontsize=8)
    shards = [c["shards"] for c in report["clusters"]]
    right.plot(shards, [c["w_lat"]["p50_ms"] for c in report["clusters"]], marker="o", label="p50")
    right.plot(shards, [c["w_lat"]["p99_ms"] for c in report["clusters"]], marker="x", label="p99")
    right.axhline(10, linestyle="--", color="grey", label="targets 10 / 30 ms")
    right.axhline(30, linestyle="--", color="grey")
    right.set(xlabel="shards", ylabel="ms", title="W-lat (one at a time)", xticks=shards)
    right.legend(fontsize=8)
    fig.tight_layout()
    paths.append(f"{stem}-latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--lat-count", type=int, default=200)
    parser.add_argument("--seq-repeat", type=int, default=3,
                        help="W-seq trials per shard count and concurrency (median shown)")
    parser.add_argument("--fan", type=int, default=200)
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--failover-load", type=int, default=1000,
                        help="W-seq workflows in flight while the leader is killed")
    parser.add_argument("--no-failover", action="store_true")
    parser.add_argument("--stored", type=int, default=1_000_000,
                        help="Completed workflows seeded for the stored row (0: skip it)")
    parser.add_argument("--stored-repeat", type=int, default=5,
                        help="W-seq trials on the empty and on the seeded cluster (in "
                        "turns); 3 gave trial pairs from x0.83 to x1.00 in one run")
    parser.add_argument("--baseline-shards", type=int, default=2,
                        help="Shard count of the baseline cluster that replicates commands "
                        "instead of write sets (0: skip it); must be one of --shards")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--client-call", choices=bx.CLIENT_CALLS, default="execute",
                        help="How the bench client runs each workflow (bench_execution)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    bx.client_call = args.client_call

    began, load_at_start = time.monotonic(), os.getloadavg()
    print("raw ceilings ...", flush=True)
    ceilings = raw_ceilings.measure_all(args.ceiling_seconds)
    clusters = []
    for i, shards in enumerate(args.shards):
        last = i == len(args.shards) - 1
        clusters.append(run_cluster(args, shards, with_failover=last and not args.no_failover))
    baseline = None
    if args.baseline_shards:
        # Write sets against a cluster with raft.replicate_write_sets off (every replica
        # runs every command, as before flow.speculation), side by side in this run.
        baseline = run_baseline_pair(args)
    stored = None
    if args.stored:
        stored = bench_stored.measure(stored=args.stored, shards=max(args.shards),
                                      workflows=max(args.concurrency),
                                      repeat=args.stored_repeat, timeout_s=args.timeout)
    ceilings["reference_loop_at_end"] = raw_ceilings.reference_loop_ms()
    report = {
        "benchmark": "performance issue table",
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_at_start": load_at_start,
                    "load_avg_at_end": os.getloadavg()},
        "git": bx.git_facts(), "settings": vars(args), "targets": bx.TARGETS,
        "ceilings": ceilings, "clusters": clusters, "baseline": baseline, "stored": stored,
        "wall_seconds": round(time.monotonic() - began, 1),
    }
    rows = table_rows(report)
    report["table"] = rows
    print()
    print_table(rows)
    path = bx.save_report(args.out, "perf", report)
    for png in plot(report, path[:-len(".json")]):
        print(f"plot {png}")
    print(f"saved {path} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
