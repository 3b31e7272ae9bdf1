"""Workflow starts per second and start latency against `coda-flow dev`, beside raw pysyncobj.

One run measures, on this machine and in this process tree:
  1. raw pysyncobj commit rate (stock and Flow's durable variant), 3 processes, 100 B no-ops;
  2. Flow: a fresh 3-node `coda-flow dev` cluster; for each concurrency level, clients
     keep that many StartWorkflow calls in flight for --seconds and record each latency.
Each measurement runs --repeat times; the table shows the median trial and the range.
Prints a table and saves JSON to bench/results/starts-<utc time>.json.

    python bench/bench_starts.py                     # defaults: ~3 minutes
    python bench/bench_starts.py --concurrency 1 8 64 --seconds 10 --shards 4

The load generator is one Python process (grpc.aio), sharing the 2 cores with the three
nodes; numbers are for this machine, not a claim about bigger ones.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import raw_pysyncobj  # noqa: E402

import coda  # noqa: E402


def start_dev(data_dir: str, shards: int, base_port: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "coda.flow.cli", "dev", "--data-dir", data_dir,
                             "--shards", str(shards), "--base-port", str(base_port),
                             "--log-level", "warning"],
                            stdout=subprocess.PIPE, text=True)
    address = None
    for line in proc.stdout:
        if line.startswith("CODA_ADDRESS="):
            address = line.strip().split("=", 1)[1]
            break
    if address is None:
        proc.wait()
        raise SystemExit("coda-flow dev did not start")
    return proc, address


async def load(address: str, concurrency: int, seconds: float, prefix: str) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with coda.Client(address, allow_undeclared_types=True) as client:
        stop_at = time.monotonic() + seconds
        counter = 0

        async def worker(w: int) -> None:
            nonlocal counter
            while time.monotonic() < stop_at:
                counter += 1
                workflow_id = f"{prefix}-{w}-{counter}"
                began = time.perf_counter()
                try:
                    await client.start_workflow("bench", {"n": counter}, workflow_id=workflow_id)
                    latencies.append(time.perf_counter() - began)
                except coda.CodaError as exc:
                    errors[exc.code] = errors.get(exc.code, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.monotonic() - began
    lat = sorted(latencies)
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(len(lat) * q))], 2) if lat else None
    return {"concurrency": concurrency, "starts": len(lat), "seconds": round(elapsed, 2),
            "starts_per_s": round(len(lat) / elapsed, 1), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "errors": errors}


def median_trial(trials: list[dict], key: str) -> dict:
    """The trial with the median `key`, annotated with the range over all trials."""
    ordered = sorted(trials, key=lambda t: t[key])
    chosen = dict(ordered[len(ordered) // 2])
    chosen[key + "_range"] = [ordered[0][key], ordered[-1][key]]
    chosen["trials"] = len(trials)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--base-port", type=int, default=7700)
    parser.add_argument("--raw-in-flight", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2,
                        help="Trials of each measurement; the table shows the median "
                             "(fsync latency on this disk varies a lot between runs).")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    raw, raw_trials = [], []
    for mode in ("stock", "durable"):
        trials = []
        for t in range(args.repeat):
            print(f"raw pysyncobj ({mode}), trial {t + 1}/{args.repeat} ...", flush=True)
            trials.append(raw_pysyncobj.run(mode, args.seconds, args.raw_in_flight,
                                            args.base_port + 500))
        raw_trials += trials
        raw.append(median_trial(trials, "commits_per_s"))

    flow, flow_trials = [], []
    with tempfile.TemporaryDirectory(prefix="coda-bench-") as data_dir:
        proc, address = start_dev(data_dir, args.shards, args.base_port)
        try:
            for c in args.concurrency:
                trials = []
                for t in range(args.repeat):
                    print(f"flow starts, concurrency {c}, trial {t + 1}/{args.repeat} ...",
                          flush=True)
                    trials.append(asyncio.run(load(address, c, args.seconds, f"b{c}t{t}")))
                flow_trials += trials
                flow.append(median_trial(trials, "starts_per_s"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    raw_stock = raw[0]["commits_per_s"]
    for row in flow:
        row["ratio_to_raw_stock"] = round(row["starts_per_s"] / raw_stock, 3)
    report = {
        "benchmark": "workflow starts", "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": vars(args), "raw_pysyncobj": raw, "flow": flow,
        "trials": {"raw_pysyncobj": raw_trials, "flow": flow_trials},
    }
    print()
    print(f"{'what':34s} {'per s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for r in raw:
        lo, hi = r["commits_per_s_range"]
        print(f"{'raw pysyncobj ' + r['mode'] + ' (' + str(r['in_flight']) + ' in flight)':34s} "
              f"{r['commits_per_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
              f"   range {lo:.0f}-{hi:.0f}/s")
    for row in flow:
        print(f"{'flow starts, concurrency ' + str(row['concurrency']):34s} "
              f"{row['starts_per_s']:9.1f} {row['p50_ms'] or 0:8.2f} {row['p99_ms'] or 0:8.2f}"
              f"   range {row['starts_per_s_range'][0]:.0f}-{row['starts_per_s_range'][1]:.0f}/s"
              f"  x{row['ratio_to_raw_stock']} of raw  errors {row['errors'] or '-'}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "starts-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + ".json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
