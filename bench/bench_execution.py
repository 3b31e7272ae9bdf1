"""Workflow execution end to end: throughput, fan-out, latency and CPU per workflow.

One run starts its own 3-node cluster (`coda-flow serve` processes, tests/integration/
harness.Cluster) in a temporary directory and one supervisor (`coda supervisor run
workloads --workers 2`) running bench/workloads.py, then measures, --repeat times each:

  start-only  the baseline: --workflows StartWorkflow calls in flight at once, of a type no
              supervisor declares (allow_undeclared_type=True: they only queue);
  W-seq       --workflows workflows in flight at once, each 3 trivial tasks in sequence:
              workflows/s (first start -> last result), p50/p99 start -> result(), and
              CPU seconds per workflow summed over every Coda process (3 nodes, the
              supervisor, its workers: utime+stime from /proc/PID/stat around the phase);
  W-fan       one workflow spawning --fan trivial tasks and awaiting them all: seconds
              to completion (median of --fan-runs workflows);
  W-lat       --lat-count single-task workflows one after another: p50/p99 start -> result().

The table shows the median trial and the range, the targets of the performance issue, and
ratios to start-only; JSON goes to bench/results/execution-<utc time>.json.

    python bench/bench_execution.py                  # defaults: ~2 minutes on 2 idle cores
    python bench/bench_execution.py --workflows 200 --lat-count 50 --repeat 1 --shards 4

The load generator is one Python process (grpc.aio) sharing the cores with the three
nodes, the supervisor and its workers; numbers are for this machine, not bigger ones.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import coda  # noqa: E402
from coda.client.progress import Progress  # noqa: E402
from coda.supervisor.supervisor import SLOTS_PER_WORKER  # noqa: E402
from harness import Cluster, SupervisorProcess  # noqa: E402

sys.path.insert(0, HERE)
import profiling  # noqa: E402
import workloads  # noqa: E402  (the same module the supervisor imports: one set of names)

UNDECLARED_TYPE = "bench_undeclared"
SEQ_TASKS = 3
WARMUP_WORKFLOWS = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Targets of the performance issue (we are not expected to meet them yet).
TARGETS = {"w_seq_wf_per_s_min": 500, "w_fan_s_max": 0.3, "w_lat_p50_ms_max": 10,
           "w_lat_p99_ms_max": 30, "cpu_ms_per_wf_max": 3}


# --- small helpers ---------------------------------------------------------------------------

def pct_ms(samples_s: list[float], q: float) -> float | None:
    """The q-quantile of latencies in seconds, in ms (nearest rank, like bench_starts)."""
    if not samples_s:
        return None
    ordered = sorted(samples_s)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def start_ack(lat: dict) -> str:
    """The W-lat start ack, where the client call makes one (start+result)."""
    if lat.get("start_p50_ms") is None:
        return "execute_workflow: start and result in one call"
    return f"start ack p50 {lat['start_p50_ms']} ms"


def median_trial(trials: list[dict], key: str) -> dict:
    """The trial with the median `key` (None, nothing measured, sorts last), annotated with
    the range over all trials."""
    ordered = sorted(trials, key=lambda t: (t[key] is None, t[key] or 0))
    chosen = dict(ordered[len(ordered) // 2])
    chosen[key + "_range"] = [ordered[0][key], ordered[-1][key]]
    chosen["trials"] = len(trials)
    return chosen


def count_error(errors: dict, exc: Exception) -> None:
    name = getattr(exc, "code", None) or type(exc).__name__
    errors[name] = errors.get(name, 0) + 1


# --- CPU of the Coda processes ---------------------------------------------------------------

def cpu_s(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pids: list[int]) -> set[int]:
    """Every live process below `pids` (a node or supervisor that forks is still counted)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


class WorkloadCluster:
    """A 3-node cluster and one supervisor with 2 workers running bench/workloads.py:
    what bench_perf and bench_stored measure (bench_stored seeds `cluster` before start)."""

    def __init__(self, root: str, shards: int, *, name: str = "bench",
                 raft: dict | None = None, env: dict | None = None):
        self.name = name
        self.cluster = Cluster(root, shards=shards, raft=raft, env=env)
        self.supervisor = SupervisorProcess(self.cluster, "workloads", root=root, workers=2,
                                            module_dir=HERE, env=env,
                                            supervisor_id=f"{name}-supervisor")

    def start(self) -> None:
        self.cluster.start()
        self.cluster.wait_leaders(timeout_s=120)
        self.supervisor.start()
        self.supervisor.wait_connected(timeout_s=120)

    def close(self) -> None:
        try:
            self.supervisor.close()
        finally:
            self.cluster.close()


@contextlib.contextmanager
def all_started(sides: list, start_order: list | None = None):
    """Every side (a WorkloadCluster) started, in start_order if given, and every one
    closed on the way out, whether it started or not: for benches that run clusters
    side by side."""
    try:
        for side in start_order or sides:
            side.start()
        yield sides
    finally:
        for side in sides:
            side.close()


def coda_pids(cluster: Cluster, supervisor: SupervisorProcess) -> dict[str, list[int]]:
    """role -> pids: the node processes, the supervisor, its workers (from /health), and any
    other process below them (should be none)."""
    nodes = [p.pid for p in cluster.procs if p is not None]
    workers = supervisor.worker_pids()
    known = set(nodes) | {supervisor.proc.pid} | set(workers)
    others = sorted(descendants(nodes + [supervisor.proc.pid]) - known)
    return {"nodes": nodes, "supervisor": [supervisor.proc.pid], "workers": workers,
            "other": others}


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[int, float | None]:
    return {pid: cpu_s(pid) for role in pids.values() for pid in role}


def cpu_delta(pids: dict[str, list[int]], before: dict, after: dict) -> dict:
    """CPU seconds used between two snapshots, per role and in total. A process that died in
    between (a worker restarted) loses its share: it is listed under `lost`."""
    out, lost = {}, []
    for role, members in pids.items():
        total = 0.0
        for pid in members:
            if before.get(pid) is None or after.get(pid) is None:
                lost.append(pid)
                continue
            total += after[pid] - before[pid]
        out[role] = round(total, 3)
    out["total"] = round(sum(out[r] for r in pids), 3)
    out["lost_pids"] = lost
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process), from
    /proc/stat: what runs beside the bench (other jobs on a shared box) shows up here."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU used during a phase: by the Coda processes (per role), by this process (the
    load generator), and by everything else on the machine."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids

    def __enter__(self) -> "CpuMeter":
        self.before = cpu_snapshot(self.pids)
        self.client_before = time.process_time()
        self.machine_before = machine_busy_s()
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.began
        self.coda = cpu_delta(self.pids, self.before, cpu_snapshot(self.pids))
        self.client_s = time.process_time() - self.client_before
        self.machine_s = machine_busy_s() - self.machine_before

    def report(self) -> dict:
        others_s = max(0.0, self.machine_s - self.coda["total"] - self.client_s)
        return {"cpu_s": self.coda, "cores_busy": round(self.coda["total"] / self.seconds, 3),
                "client_cpu_s": round(self.client_s, 3),
                "other_processes_cores_busy": round(others_s / self.seconds, 3)}


class HealthSampler:
    """Samples the supervisor's /health while a phase runs: how many items it holds against
    its slots tells whether credit (slots) or something upstream bounds the throughput."""

    FIELDS = ("items", "in_flight", "running", "credit_outstanding", "unacked")

    def __init__(self, supervisor: SupervisorProcess, period_s: float = 0.25):
        self.supervisor = supervisor
        self.period_s = period_s
        self.samples: list[dict] = []

    async def __aenter__(self) -> "HealthSampler":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            try:
                health = await asyncio.to_thread(self.supervisor.health)
                sessions = health.get("sessions", {}).values()
                self.samples.append({
                    "items": health.get("items"), "in_flight": health.get("in_flight"),
                    **{k: sum(s[k] for s in sessions) for k in self.FIELDS[2:]}})
            except (OSError, ValueError):
                pass
            await asyncio.sleep(self.period_s)

    def report(self) -> dict:
        """Mean and max of each field over the samples."""
        out = {"samples": len(self.samples)}
        for name in self.FIELDS:
            values = [s[name] for s in self.samples if s[name] is not None]
            if values:
                out[name] = {"mean": round(statistics.mean(values), 1), "max": max(values)}
        return out


# Flow counters summed over shards: (name, per replica: every node applies the same entries,
# so node 0 speaks for all; else leader-side: summed over nodes).
FLOW_COUNTERS = (("coda_shard_apply_batch_entries_sum", True),
                 ("coda_shard_apply_batch_entries_count", True),
                 ("coda_shard_apply_batch_seconds_sum", True),
                 ("coda_shard_read_barriers_total", False),
                 ("coda_shard_dispatched_total", False),
                 ("coda_shard_completions_total", False),
                 ("coda_shard_dispatch_batch_items_count", False),
                 ("coda_shard_completion_batch_items_count", False),
                 ("coda_shard_proposal_batch_commands_sum", False))


def flow_counters(cluster: Cluster) -> dict[str, float]:
    """The FLOW_COUNTERS, read from the nodes' /metrics."""
    per_node = []
    for i in range(len(cluster.nodes)):
        sums: dict[str, float] = {}
        for line in cluster.metrics_text(i).splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            name = key.partition("{")[0]
            sums[name] = sums.get(name, 0.0) + float(value)
        per_node.append(sums)
    return {name: per_node[0].get(name, 0.0) if per_replica
            else sum(n.get(name, 0.0) for n in per_node)
            for name, per_replica in FLOW_COUNTERS}


def flow_per_workflow(before: dict, after: dict, workflows: int) -> dict:
    """What Flow did per workflow of a phase: Raft entries, LMDB transactions, read
    barriers, dispatches, completions; and the mean apply batch."""
    d = {name: after[name] - before[name] for name in before}
    batches = d["coda_shard_apply_batch_entries_count"]
    per = lambda name: round(d[name] / workflows, 2) if workflows else None  # noqa: E731
    return {"raft_entries": per("coda_shard_apply_batch_entries_sum"),
            "lmdb_commits": per("coda_shard_apply_batch_entries_count"),
            "read_barriers": per("coda_shard_read_barriers_total"),
            "dispatches": per("coda_shard_dispatched_total"),
            "completions": per("coda_shard_completions_total"),
            "dispatch_messages": per("coda_shard_dispatch_batch_items_count"),
            "completion_messages": per("coda_shard_completion_batch_items_count"),
            "commands": per("coda_shard_proposal_batch_commands_sum"),
            "apply_batch_entries_mean": round(d["coda_shard_apply_batch_entries_sum"] / batches, 1)
            if batches else None,
            "apply_batch_ms_mean": round(1000 * d["coda_shard_apply_batch_seconds_sum"] / batches,
                                         2) if batches else None}


# --- phases ----------------------------------------------------------------------------------

async def start_only(client: coda.Client, n: int, prefix: str) -> dict:
    """n starts of an undeclared type, all in flight at once: the baseline."""
    latencies, errors = [], {}

    async def one(i: int) -> None:
        began = time.perf_counter()
        try:
            await client.start_workflow(UNDECLARED_TYPE, {"i": i}, workflow_id=f"{prefix}-{i}",
                                        allow_undeclared_type=True)
            latencies.append(time.perf_counter() - began)
        except coda.CodaError as exc:
            count_error(errors, exc)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - began
    return {"workflows": n, "completed": len(latencies), "seconds": round(elapsed, 3),
            "wf_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pct_ms(latencies, 0.5),
            "p99_ms": pct_ms(latencies, 0.99), "errors": errors}


# How a bench client runs a workflow: "execute" (client.execute_workflow: one call that
# starts the run and answers its result) or "start+result" (start_workflow, then
# handle.result(): two calls, the start ack timed on its own). --client-call sets it.
CLIENT_CALLS = ("execute", "start+result")
client_call = "execute"


async def run_one(client: coda.Client, workflow, args: dict, workflow_id: str,
                  timeout_s: float, wall: list | None = None) -> tuple[float | None, float]:
    """Run a workflow to its result: (seconds to the start ack, None with execute;
    seconds to the result), both from the first call. `wall` gets the wall-clock ms of
    the first call and of the result (to line up with the leader's event stamps)."""
    wall_began, began = time.time(), time.perf_counter()
    if client_call == "execute":
        started = None
        await client.execute_workflow(workflow, args, workflow_id=workflow_id, timeout=timeout_s)
    else:
        handle = await client.start_workflow(workflow, args, workflow_id=workflow_id)
        started = time.perf_counter() - began
        await handle.result(timeout=timeout_s)
    ended = time.perf_counter()
    if wall is not None:
        wall += [1000 * wall_began, 1000 * (wall_began + ended - began)]
    return started, ended - began


async def anatomy(client: coda.Client, walls: dict[str, list]) -> list[list]:
    """Where a workflow's time goes, from its history: [[from, to, median ms], ...] over
    consecutive steps, from the client's start call through each event (stamped by the
    shard leader when it proposed the command) to the client holding the result. Workflows
    whose event sequence differs from the most common one are left out."""
    gaps: dict[tuple, list[list[float]]] = {}
    for workflow_id, (start_ms, result_ms) in walls.items():
        events = await client.workflow_history(workflow_id)
        steps = [("client start", start_ms)] + [(e["type"], e["time_ms"]) for e in events] \
            + [("client result", result_ms)]
        names = tuple(name for name, _ in steps)
        gaps.setdefault(names, []).append([b[1] - a[1] for a, b in zip(steps, steps[1:])])
    if not gaps:
        return []
    names, rows = max(gaps.items(), key=lambda item: len(item[1]))
    return [[names[i], names[i + 1], round(statistics.median(r[i] for r in rows), 1)]
            for i in range(len(names) - 1)]


async def w_seq(client: coda.Client, n: int, prefix: str, timeout_s: float, pids: dict,
                idle_cores: float, cluster: Cluster, supervisor: SupervisorProcess,
                profile_dir: str | None = None) -> dict:
    """n workflows of SEQ_TASKS sequential tasks, all in flight at once, with the CPU used
    (also net of what the Coda processes burn when idle, `idle_cores`)."""
    latencies, errors = [], {}
    progress = Progress("  W-seq:", "workflows", total=n)

    async def one(i: int) -> None:
        try:
            _, total = await run_one(client, workloads.seq, {"n": SEQ_TASKS}, f"{prefix}-{i}",
                                     timeout_s)
            latencies.append(total)
        except coda.CodaError as exc:
            count_error(errors, exc)
        progress.add(1)

    counters = await asyncio.to_thread(flow_counters, cluster)
    profiler = profiling.Profiler(pids, profile_dir) if profile_dir else contextlib.nullcontext()
    async with HealthSampler(supervisor) as health:
        with profiler, CpuMeter(pids) as meter:
            client_cpu_began_s = time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            client_cpu_s = time.process_time() - client_cpu_began_s
    progress.done()
    profile = {role: profiling.summarize(paths)
               for role, paths in profiler.files().items()} if profile_dir else None
    flow = flow_per_workflow(counters, await asyncio.to_thread(flow_counters, cluster), n)
    elapsed, cpu = meter.seconds, meter.coda["total"]
    done = len(latencies)
    per_wf = lambda cpu_s: round(1000 * cpu_s / done, 2) if done else None  # noqa: E731
    return {"workflows": n, "tasks_each": SEQ_TASKS, "completed": done,
            "seconds": round(elapsed, 3), "wf_per_s": round(done / elapsed, 1),
            "p50_ms": pct_ms(latencies, 0.5), "p99_ms": pct_ms(latencies, 0.99),
            "cpu_ms_per_wf": per_wf(cpu),
            "cpu_ms_per_wf_above_idle": per_wf(max(0.0, cpu - idle_cores * elapsed)),
            # This bench process (the SDK client, its gRPC threads): not a Coda process,
            # but it shares the two cores with them.
            "client_cpu_ms_per_wf": per_wf(client_cpu_s),
            **meter.report(), "supervisor_health": health.report(), "flow_per_wf": flow,
            "profile": profile, "errors": errors}


async def w_fan(client: coda.Client, fan: int, runs: int, prefix: str, timeout_s: float) -> dict:
    """`runs` fan-out workflows one after another; the median time to completion."""
    times, errors, last_ok = [], {}, None
    for r in range(runs):
        try:
            _, total = await run_one(client, workloads.fan, {"n": fan}, f"{prefix}-{r}", timeout_s)
            times.append(total)
            last_ok = f"{prefix}-{r}"
        except coda.CodaError as exc:
            count_error(errors, exc)
    # How many workflow tasks (each a replay or a sticky resume) the fan-out took.
    events = await client.workflow_history(last_ok) if last_ok else []
    return {"fan": fan, "runs": runs, "completed": len(times),
            "seconds": round(statistics.median(times), 3) if times else None,
            "all_seconds": [round(t, 3) for t in times],
            "event_counts": dict(collections.Counter(e["type"] for e in events)),
            "errors": errors}


async def w_lat(client: coda.Client, count: int, prefix: str, timeout_s: float) -> dict:
    """`count` single-task workflows one after another: start -> result() latency."""
    totals, starts, errors, walls = [], [], {}, {}
    progress = Progress("  W-lat:", "workflows", total=count)
    for i in range(count):
        wall: list[float] = []
        try:
            start, total = await run_one(client, workloads.one, {}, f"{prefix}-{i}", timeout_s,
                                         wall)
            if start is not None:
                starts.append(start)
            totals.append(total)
            walls[f"{prefix}-{i}"] = wall
        except coda.CodaError as exc:
            count_error(errors, exc)
        progress.add(1)
    progress.done()
    return {"workflows": count, "completed": len(totals), "p50_ms": pct_ms(totals, 0.5),
            "p99_ms": pct_ms(totals, 0.99), "min_ms": pct_ms(totals, 0.0),
            "start_p50_ms": pct_ms(starts, 0.5), "start_p99_ms": pct_ms(starts, 0.99),
            "anatomy_ms": await anatomy(client, walls), "errors": errors}


async def warm_up(client: coda.Client, timeout_s: float) -> None:
    """Connections, shard maps, worker imports and sticky caches: not measured."""
    await asyncio.gather(*(run_one(client, workloads.one, {}, f"warm-{i}", timeout_s)
                           for i in range(WARMUP_WORKFLOWS)))
    await run_one(client, workloads.seq, {"n": SEQ_TASKS}, "warm-seq", timeout_s)
    await run_one(client, workloads.fan, {"n": 20}, "warm-fan", timeout_s)


async def idle_cpu(pids: dict, seconds: float) -> dict:
    """Cores the Coda processes keep busy with no work (ticks, heartbeats, poll loops)."""
    with CpuMeter(pids) as meter:
        await asyncio.sleep(seconds)
    return {"seconds": seconds, **meter.report()}


async def measure(args, cluster: Cluster, supervisor: SupervisorProcess) -> dict:
    trials = {"start_only": [], "w_seq": [], "w_fan": [], "w_lat": []}
    async with coda.Client(cluster.address, timeout_s=60.0) as client:
        print("warming up ...", flush=True)
        await warm_up(client, args.timeout)
        pids = coda_pids(cluster, supervisor)
        idle = await idle_cpu(pids, args.idle_seconds)
        for t in range(args.repeat):
            tag = f"trial {t + 1}/{args.repeat}"
            print(f"start-only, {args.workflows} in flight, {tag} ...", flush=True)
            trials["start_only"].append(await start_only(client, args.workflows, f"so{t}"))
            print(f"W-seq, {args.workflows} x {SEQ_TASKS} tasks, {tag} ...", flush=True)
            profile_dir = os.path.join(args.profile, f"trial-{t + 1}") if args.profile else None
            trials["w_seq"].append(await w_seq(client, args.workflows, f"seq{t}", args.timeout,
                                               pids, idle["cores_busy"], cluster, supervisor,
                                               profile_dir))
            print(f"W-fan, {args.fan} tasks x {args.fan_runs} runs, {tag} ...", flush=True)
            trials["w_fan"].append(await w_fan(client, args.fan, args.fan_runs, f"fan{t}",
                                               args.timeout))
            print(f"W-lat, {args.lat_count} one after another, {tag} ...", flush=True)
            trials["w_lat"].append(await w_lat(client, args.lat_count, f"lat{t}", args.timeout))
        pids_after = coda_pids(cluster, supervisor)
    return {
        "pids": pids, "pids_changed": pids_after != pids, "idle": idle, "trials": trials,
        "start_only": median_trial(trials["start_only"], "wf_per_s"),
        "w_seq": median_trial(trials["w_seq"], "wf_per_s"),
        "w_fan": median_trial(trials["w_fan"], "seconds"),
        "w_lat": median_trial(trials["w_lat"], "p50_ms"),
    }


# --- report ----------------------------------------------------------------------------------

def save_report(out_dir: str, name: str, report: dict) -> str:
    """bench/results/<name>-<UTC time>.json; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    return path


def git_facts() -> dict:
    def git(*argv) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout
    # Others edit the tree while benches run: record what differed from the commit.
    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty_paths": dirty}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def print_table(r: dict) -> None:
    so, seq, fan, lat, idle = r["start_only"], r["w_seq"], r["w_fan"], r["w_lat"], r["idle"]
    held = seq["supervisor_health"].get("items", {})
    fw = seq["flow_per_wf"]
    busy = seq["supervisor_health"].get("in_flight", {})
    rows = [
        (f"start-only, {so['workflows']} in flight", f"{so['wf_per_s']:.1f} wf/s", "-",
         f"start p50 {so['p50_ms']} ms, p99 {so['p99_ms']} ms; range "
         f"{so['wf_per_s_range'][0]:.0f}-{so['wf_per_s_range'][1]:.0f}/s"),
        (f"W-seq {seq['workflows']} x {SEQ_TASKS} tasks", f"{seq['wf_per_s']:.1f} wf/s",
         f">= {TARGETS['w_seq_wf_per_s_min']}",
         f"x{r['ratios']['w_seq_to_start_only']} of start-only; range "
         f"{seq['wf_per_s_range'][0]:.1f}-{seq['wf_per_s_range'][1]:.1f}/s"),
        ("W-seq latency p50 / p99", f"{seq['p50_ms']} / {seq['p99_ms']} ms", "-",
         "start -> result(), all in flight at once"),
        (f"W-fan {fan['fan']} tasks", f"{fan['seconds']} s", f"<= {TARGETS['w_fan_s_max']}",
         f"runs {fan['all_seconds']}; workflow tasks in one: "
         f"{fan['event_counts'].get('WorkflowTaskCompleted')}"),
        (f"W-lat p50 / p99 ({lat['workflows']} in a row)", f"{lat['p50_ms']} / {lat['p99_ms']} ms",
         f"<= {TARGETS['w_lat_p50_ms_max']} / {TARGETS['w_lat_p99_ms_max']}",
         f"min {lat['min_ms']} ms; {start_ack(lat)}"),
        ("CPU per W-seq workflow", f"{seq['cpu_ms_per_wf']} ms",
         f"<= {TARGETS['cpu_ms_per_wf_max']}",
         "{above} ms above idle; nodes {nodes} s, supervisor {supervisor} s, workers {workers} s; "
         "{cores} cores busy; the bench's client {client} ms/wf".format(
             above=seq["cpu_ms_per_wf_above_idle"], cores=seq["cores_busy"],
             client=seq["client_cpu_ms_per_wf"], **seq["cpu_s"])),
        ("supervisor items held in W-seq", f"{held.get('mean')} of {r['slots']} slots", "-",
         f"max {held.get('max')}; in workers mean {busy.get('mean')}, max {busy.get('max')}"),
        ("Flow work per W-seq workflow", f"{fw['raft_entries']} Raft entries", "-",
         f"{fw['lmdb_commits']} LMDB commits per replica (mean batch "
         f"{fw['apply_batch_entries_mean']} entries, {fw['apply_batch_ms_mean']} ms), "
         f"{fw['read_barriers']} read barriers, {fw['dispatches']} dispatches, "
         f"{fw['completions']} completions; {fw['commands']} commands, "
         f"{fw['dispatch_messages']} dispatch and {fw['completion_messages']} completion "
         "messages"),
        ("idle CPU, no work", f"{idle['cores_busy']} cores", "-",
         f"over {idle['seconds']} s: nodes {idle['cpu_s']['nodes']} s, supervisor "
         f"{idle['cpu_s']['supervisor']} s, workers {idle['cpu_s']['workers']} s"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    head = ("what", "measured", "target")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  notes")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    steps = [(a, b, ms) for a, b, ms in lat["anatomy_ms"] if ms]
    if steps:
        print("W-lat, where the median workflow's time goes (ms, from the leader's event "
              "stamps; steps in one command omitted):")
        for a, b, ms in steps:
            print(f"  {a} -> {b}: {ms}")
    errors = {k: r[k]["errors"] for k in ("start_only", "w_seq", "w_fan", "w_lat")
              if r[k]["errors"]}
    if errors:
        print(f"errors: {errors}")
    others = max(seq["other_processes_cores_busy"], idle["other_processes_cores_busy"])
    if others > 0.2:
        print(f"warning: other processes on this machine kept up to {others} cores busy "
              "during the run: the numbers are low (see load_avg in the JSON)")
    if r["pids_changed"] or seq["cpu_s"]["lost_pids"]:
        print("warning: Coda processes changed during the run (a worker restarted?); CPU "
              "figures miss the processes that died")


def raft_setting(text: str) -> tuple[str, object]:
    """NAME=VALUE of --raft: true/false, an int or a float, else the string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--raft takes NAME=VALUE, not {text!r}")
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return name.strip(), lowered == "true"
    for kind in (int, float):
        try:
            return name.strip(), kind(raw)
        except ValueError:
            pass
    return name.strip(), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=500,
                        help="W-seq and start-only: workflows in flight at once")
    parser.add_argument("--fan", type=int, default=200, help="W-fan: tasks per workflow")
    parser.add_argument("--fan-runs", type=int, default=3, help="W-fan: workflows per trial")
    parser.add_argument("--lat-count", type=int, default=200, help="W-lat: workflows in a row")
    parser.add_argument("--repeat", type=int, default=2,
                        help="Trials of each measurement; the table shows the median")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="The supervisor's worker processes")
    parser.add_argument("--slots", type=int, default=None, help="The supervisor's slots "
                        "(default: its own, supervisor.SLOTS_PER_WORKER per worker)")
    parser.add_argument("--idle-seconds", type=float, default=3.0,
                        help="How long to measure the idle CPU of the Coda processes")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="Seconds one workflow may take before it counts as an error")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="Profile every Coda process with py-spy during W-seq; raw "
                        "stacks go to DIR, a summary to the table and the JSON (profiling "
                        "slows the processes a little: compare profiled runs with profiled)")
    parser.add_argument("--client-call", choices=CLIENT_CALLS, default="execute",
                        help="How the bench client runs each workflow (see CLIENT_CALLS)")
    parser.add_argument("--raft", metavar="NAME=VALUE", action="append", default=[],
                        type=raft_setting, help="A [raft] setting of the nodes (A/B runs), "
                        "e.g. answer_before_lmdb_commit=false; repeatable")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    global client_call
    client_call = args.client_call
    if args.profile and not profiling.available():
        parser.error("--profile needs py-spy (pip install -e '.[bench]')")

    began, load_at_start = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="coda-bench-exec-") as root:
        cluster = Cluster(root, shards=args.shards, raft=dict(args.raft) or None)
        supervisor = SupervisorProcess(cluster, "workloads", root=root, workers=args.workers,
                                       module_dir=HERE, slots=args.slots,
                                       supervisor_id="bench-supervisor")
        try:
            print(f"starting 3 nodes ({args.shards} shards) and a supervisor "
                  f"({args.workers} workers) in {root} ...", flush=True)
            cluster.start()
            cluster.wait_leaders(timeout_s=60)
            supervisor.start()
            supervisor.wait_connected(timeout_s=120)
            results = asyncio.run(measure(args, cluster, supervisor))
        except BaseException:
            if supervisor.proc is not None:
                print("supervisor log tail:\n" + supervisor.read_log()[-3000:], file=sys.stderr)
            for i in range(len(cluster.nodes)):
                if os.path.exists(cluster.log_path(i)):
                    print(f"node {i} log tail:\n" + cluster.read_log(i)[-2000:], file=sys.stderr)
            supervisor.close()
            cluster.close()
            raise
        # The measurements stand even if a process is slow to stop: say so, keep them.
        try:
            results["supervisor_exit_code"] = supervisor.stop()
            cluster.stop()
            results["clean_shutdown"] = True
        except AssertionError as exc:
            print(f"warning: shutdown: {exc}", file=sys.stderr)
            results["clean_shutdown"] = False
        finally:
            supervisor.close()
            cluster.close()

    results["ratios"] = {
        "w_seq_to_start_only": ratio(results["w_seq"]["wf_per_s"],
                                     results["start_only"]["wf_per_s"]),
        "w_seq_cpu_to_target": ratio(results["w_seq"]["cpu_ms_per_wf"],
                                     TARGETS["cpu_ms_per_wf_max"]),
    }
    report = {
        "benchmark": "workflow execution",
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_avg_at_start": load_at_start,
                    "load_avg_at_end": os.getloadavg()},
        "git": git_facts(), "settings": vars(args), "targets": TARGETS,
        "slots": args.slots or args.workers * SLOTS_PER_WORKER,
        "wall_seconds": round(time.monotonic() - began, 1), **results,
    }
    print()
    print_table(report)
    if report["w_seq"].get("profile"):
        print("\nW-seq profile (py-spy, share of samples per role):")
        for role, summary in report["w_seq"]["profile"].items():
            profiling.print_summary(role, summary)
    path = save_report(args.out, "execution", report)
    print(f"\nsaved {path} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
