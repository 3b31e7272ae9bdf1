"""Which checkers read which workload's ops, and the run's overall verdict."""

from __future__ import annotations

CHECKS = {  # workload -> [(result name, checker module)]
    "workflows": [("starts", "workflows"), ("task-results", "tasks")],
    "queue": [("queue", "queue")],
    "timers": [("timers", "timers")],
    "register": [("broadcast-linearizable", "linearizable")],
    "counter": [("state-monotonic", "monotonic")],
}


def check_all(ops: list[dict], workloads: list[str]) -> dict:
    import importlib
    results = {}
    for workload in workloads:
        mine = [op for op in ops if op.get("workload") == workload]
        for name, module in CHECKS[workload]:
            checker = importlib.import_module(f"jepsen.checkers.{module}")
            results[name] = checker.check(mine)
    return results


def verdict(results: dict, error=None) -> dict:
    from jepsen.checkers import compose
    out = compose(results) if results else {"valid": False}
    out = dict(out, checkers=results)
    if error is not None:
        out.update(valid=False, error=repr(error))
    return out
