"""A/B of two node settings, both clusters up at once, their trials taking turns.

This 2-core host's speed drifts by a third within an hour, so two builds or settings
measured one after the other compare two moments of the machine. Here side A and side B
(each a 3-node cluster with a supervisor and 2 workers, bench_execution.WorkloadCluster)
run W-lat one workflow at a time in turns (A B B A ...: both sides' latencies sample
the same moments), then W-seq trials in turns, ABBA order; the table gives each round
and the medians, with B/A ratios.

    python bench/bench_ab.py --b answer_before_lmdb_commit=false --rounds 4

`--a`/`--b` take [raft] settings (NAME=VALUE, repeatable), as bench_execution's --raft.
`--b-tree DIR` runs side B's nodes, supervisor and workers from another checkout (say
`git worktree add /tmp/before HEAD~1`): a directory of links shaped like the installed
`coda` package goes first on their PYTHONPATH, ahead of the editable install's finder.
Saves bench/results/ab-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import importlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_execution as bx  # noqa: E402
import coda  # noqa: E402

FIELDS = (("W-lat p50 ms", "lat", "p50_ms"), ("W-lat p99 ms", "lat", "p99_ms"),
          ("W-seq wf/s", "seq", "wf_per_s"), ("CPU ms/wf", "seq", "cpu_ms_per_wf"))


async def alternate(args, sides: list) -> list[dict]:
    """One dict per round and side: {"side", "round", "lat": W-lat, "seq": w_seq}.
    W-lat is interleaved (interleaved_lat); W-seq trials take turns, ABBA."""
    clients = [coda.Client(s.cluster.address, timeout_s=60.0) for s in sides]
    rounds = []
    try:
        for client in clients:
            await bx.warm_up(client, args.timeout)
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds}: W-lat {args.lat_count} a side, "
                  "interleaved ...", flush=True)
            lats = await interleaved_lat(args, sides, clients, r)
            order = list(zip(sides, clients, lats))
            if r % 2:
                order.reverse()  # ABBA: neither side always goes first
            for side, client, lat in order:
                print(f"  round {r + 1}/{args.rounds}, {side.name}: W-seq {args.workflows} ...",
                      flush=True)
                seq = await bx.w_seq(client, args.workflows, f"ab-seq-{side.name}-{r}",
                                     args.timeout, bx.coda_pids(side.cluster, side.supervisor),
                                     0.0, side.cluster, side.supervisor)
                rounds.append({"side": side.name, "round": r + 1, "lat": lat, "seq": seq})
    finally:
        for client in clients:
            await client.close()
    return rounds


async def interleaved_lat(args, sides: list, clients: list, round_index: int) -> list[dict]:
    """W-lat on both sides, one workflow at a time taking turns (A B B A ...): each side's
    p50 is then of the same minutes of this host, whose speed drifts within a round by
    more than the effects we look for. One dict per side, as bench_execution.w_lat's."""
    totals: list[list[float]] = [[] for _ in sides]
    errors: list[dict] = [{} for _ in sides]
    for i in range(args.lat_count):
        order = list(range(len(sides)))
        if (i + round_index) % 2:
            order.reverse()
        for k in order:
            try:
                _, total = await bx.run_one(clients[k], bx.workloads.one, {},
                                            f"ab-lat-{sides[k].name}-{round_index}-{i}",
                                            args.timeout)
                totals[k].append(total)
            except coda.CodaError as exc:
                bx.count_error(errors[k], exc)
    return [{"workflows": args.lat_count, "completed": len(t), "p50_ms": bx.pct_ms(t, 0.5),
             "p99_ms": bx.pct_ms(t, 0.99), "min_ms": bx.pct_ms(t, 0.0), "errors": e}
            for t, e in zip(totals, errors)]


def summarize(rounds: list[dict]) -> dict:
    """Per side, the median of each field over its rounds; and B/A."""
    out = {}
    for side in ("A", "B"):
        mine = [r for r in rounds if r["side"] == side]
        out[side] = {label: _median([r[part][key] for r in mine]) for label, part, key in FIELDS}
    out["B/A"] = {label: (round(out["B"][label] / out["A"][label], 3)
                          if out["A"][label] and out["B"][label] is not None else None)
                  for label, _, _ in FIELDS}
    return out


def _median(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def print_table(rounds: list[dict], summary: dict) -> None:
    head = ["round", "side"] + [label for label, _, _ in FIELDS]
    rows = [[str(r["round"]), r["side"]] + [str(r[part][key]) for _, part, key in FIELDS]
            for r in rounds]
    rows += [["median", side] + [str(summary[side][label]) for label, _, _ in FIELDS]
             for side in ("A", "B", "B/A")]
    widths = [max(len(row[i]) for row in rows + [head]) for i in range(len(head))]
    for row in [head] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def shadow_package(tree: str, into: str) -> str:
    """A directory holding `coda` as the checkout `tree` would install it (links to its
    folders, mapped as the editable install maps this checkout's); returns the path to
    put on PYTHONPATH."""
    finder = next((m for m in sys.modules if m.startswith("__editable__") and
                   m.endswith("_finder")), None)
    mapping = getattr(importlib.import_module(finder), "MAPPING", None) if finder else None
    if not mapping:
        raise SystemExit("--b-tree needs Coda installed editable (pip install -e .)")
    root = os.path.dirname(HERE)
    package = os.path.join(into, "coda")
    os.makedirs(package)
    top = os.path.join(tree, os.path.relpath(mapping["coda"], root))
    for name in os.listdir(top):
        if name != "__pycache__":
            os.symlink(os.path.join(top, name), os.path.join(package, name))
    for module, path in mapping.items():
        if module != "coda":
            os.symlink(os.path.join(tree, os.path.relpath(path, root)),
                       os.path.join(package, module.split(".", 1)[1]))
    return into


def tree_commit(tree: str) -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", metavar="NAME=VALUE", action="append", default=[],
                        type=bx.raft_setting, help="A [raft] setting of side A; repeatable")
    parser.add_argument("--b", metavar="NAME=VALUE", action="append", default=[],
                        type=bx.raft_setting, help="A [raft] setting of side B; repeatable")
    parser.add_argument("--b-tree", metavar="DIR", default=None,
                        help="Run side B from this checkout (its code, this bench)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workflows", type=int, default=500, help="W-seq: in flight at once")
    parser.add_argument("--lat-count", type=int, default=300, help="W-lat: workflows in a row")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if not args.a and not args.b and not args.b_tree:
        parser.error("give --a, --b or --b-tree: two identical sides measure only the noise")

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coda-bench-ab-a-") as root_a, \
            tempfile.TemporaryDirectory(prefix="coda-bench-ab-b-") as root_b:
        env_b = None
        if args.b_tree:
            shadow = shadow_package(os.path.abspath(args.b_tree), os.path.join(root_b, "code"))
            env_b = {"PYTHONPATH": shadow}
        sides = [bx.WorkloadCluster(root_a, args.shards, name="A", raft=dict(args.a) or None),
                 bx.WorkloadCluster(root_b, args.shards, name="B", raft=dict(args.b) or None,
                                    env=env_b)]
        print(f"A {dict(args.a)} and B {dict(args.b)}"
              f"{' from ' + args.b_tree if args.b_tree else ''}, {args.shards} shards, "
              "side by side ...", flush=True)
        with bx.all_started(sides):
            rounds = asyncio.run(alternate(args, sides))
    summary = summarize(rounds)
    report = {"benchmark": "A/B, alternating", "a": dict(args.a), "b": dict(args.b),
              "b_tree": args.b_tree and {"path": args.b_tree, "commit": tree_commit(args.b_tree)},
              "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "git": bx.git_facts(), "settings": {k: v for k, v in vars(args).items()
                                                  if k not in ("a", "b", "b_tree")},
              "rounds": rounds, "summary": summary,
              "wall_seconds": round(time.monotonic() - began, 1)}
    print()
    print_table(rounds, summary)
    print(f"saved {bx.save_report(args.out, 'ab', report)} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
