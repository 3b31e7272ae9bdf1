"""`python -m jepsen ...`: run the fault-injection suite, or report on runs.

    python -m jepsen run --workload all --nemesis partition-leader --time 60 --seed 1
    python -m jepsen run --workload register,counter --nemesis mix --time 30 --seed 7
    python -m jepsen suite --quick            # the short CI suite: fixed seeds, ~5 minutes
    python -m jepsen suite --time 60 --seeds 1,2,3   # every nemesis, all workloads
    python -m jepsen report results/<run>     # print a run's verdict again (re-checked)

Exit code 0 when every run is valid, 1 when a run is invalid or could not be checked,
2 for bad arguments. As non-root, partitions are unavailable (hosts on loopback): asking
for one is an error; `suite` lists them as not run, never as passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from jepsen import nemesis as nemesis_mod
from jepsen.runner import WORKLOADS, Run

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "jepsen", "results")
QUICK = [("partition-leader", 1), ("kill-majority", 2), ("pause-leader", 3),
         ("clock-strobe", 4), ("lose-unsynced-one", 5)]


def _workloads(text: str) -> list[str]:
    names = list(WORKLOADS) if text == "all" else [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {bad}; choose from "
                                         f"{', '.join(WORKLOADS)} or all")
    return names


def _line(verdict: dict) -> str:
    parts = [f"{name}: {r.get('valid')}" for name, r in verdict.get("checkers", {}).items()]
    return (f"{verdict['nemesis']:18s} seed {verdict['seed']}: valid={verdict['valid']}  "
            f"ops={verdict['ops']}  faults={len(verdict.get('faults', []))}  "
            f"[{', '.join(parts)}]  {verdict.get('dir', '')}")


def run_one(args, nemesis: str, seed: int) -> dict:
    started = time.monotonic()
    print(f"run: {','.join(args.workload)} x {nemesis}, {args.time} s, seed {seed} ...",
          flush=True)
    run = Run(workloads=args.workload, nemesis=nemesis, time_s=args.time, seed=seed,
              out_base=args.out, progress=lambda text: print("  " + text, flush=True))
    try:
        verdict = run.execute()
    except Exception as exc:  # the run's own verdict.json says what broke
        verdict = {"valid": False, "nemesis": nemesis, "seed": seed, "ops": 0}
        path = os.path.join(run.dir, "verdict.json")
        if os.path.exists(path):
            with open(path) as f:
                verdict = json.load(f)
        verdict["error"] = repr(exc)
    verdict["dir"] = run.dir
    print("  " + _line(verdict) + f" ({time.monotonic() - started:.0f} s)", flush=True)
    return verdict


def cmd_run(args) -> int:
    verdict = run_one(args, args.nemesis, args.seed)
    return 0 if verdict["valid"] is True else 1


def cmd_suite(args) -> int:
    from jepsen.hosts import capabilities
    caps = {k for k, why in capabilities().items() if why is None}
    if args.quick:
        plan = QUICK
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        plan = [(n, s) for n in nemesis_mod.ALL if n != "none" for s in seeds]
    verdicts, skipped = [], []
    for nemesis, seed in plan:
        if not nemesis_mod.needs(nemesis) <= caps:
            skipped.append(f"{nemesis} (needs {sorted(nemesis_mod.needs(nemesis) - caps)})")
            continue
        verdicts.append(run_one(args, nemesis, seed))
    bad = [v for v in verdicts if v["valid"] is not True]
    print(f"\nsuite: {len(verdicts) - len(bad)} passed, {len(bad)} failed"
          + (f"; NOT RUN here: {', '.join(skipped)}" if skipped else ""))
    with open(os.path.join(args.out, f"suite-{time.strftime('%Y%m%dT%H%M%S')}.json"), "w") as f:
        json.dump({"verdicts": verdicts, "not_run": skipped}, f, indent=2, default=str)
    return 1 if bad or (skipped and os.environ.get("CI")) else 0


def cmd_report(args) -> int:
    from jepsen import check, history
    ops = history.load(os.path.join(args.dir, "history.jsonl"))
    with open(os.path.join(args.dir, "verdict.json")) as f:
        old = json.load(f)
    results = check.check_all(ops, old["workloads"])
    verdict = check.verdict(results)
    print(json.dumps(verdict, indent=2, default=str))
    return 0 if verdict["valid"] is True else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "suite"):
        p = sub.add_parser(name)
        p.add_argument("--workload", type=_workloads, default=list(WORKLOADS))
        p.add_argument("--time", type=float, default=None,
                       help="seconds of workload (default 60; 20 for suite --quick)")
        p.add_argument("--out", default=DEFAULT_OUT)
        if name == "run":
            p.add_argument("--nemesis", choices=nemesis_mod.ALL, default="mix")
            p.add_argument("--seed", type=int, default=1)
        else:
            p.add_argument("--quick", action="store_true", help="the CI suite (fixed seeds)")
            p.add_argument("--seeds", default="1,2,3")
    p = sub.add_parser("report")
    p.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command != "report" and args.time is None:
        args.time = 20.0 if getattr(args, "quick", False) else 60.0
    if args.command != "report":
        os.makedirs(args.out, exist_ok=True)
    return {"run": cmd_run, "suite": cmd_suite, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
