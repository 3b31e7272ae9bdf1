"""Which checkers read which workload's ops, and the run's overall verdict."""

from __future__ import annotations

CHECKS = {  # workload -> [(result name, checker module)]
    "workflows": [("starts", "workflows"), ("task-results", "tasks")],
    "queue": [("queue", "queue")],
    "timers": [("timers", "timers")],
    "register": [("broadcast-linearizable", "linearizable")],
    "counter": [("state-monotonic", "monotonic")],
}


def clock_faulted(ops: list[dict]) -> bool:
    return any(op.get("process") == "nemesis" and op["f"].startswith("start-clock")
               for op in ops)


def options(module: str, ops: list[dict]) -> dict:
    """Checker options this run's faults call for."""
    if module == "timers" and clock_faulted(ops):
        # Invariant 5 is about the leader's clock: a leader whose clock runs fast fires
        # early in real time, legally; checked then on the leader's clock (fire_at_ms,
        # fired_ms from the history) and with every firing counted.
        return {"realtime": False}
    if module == "linearizable":
        return {"max_ops_per_key": 5000}
    return {}


def check_all(ops: list[dict], workloads: list[str]) -> dict:
    import importlib
    results = {}
    for workload in workloads:
        mine = [op for op in ops if op.get("workload") == workload]
        for name, module in CHECKS[workload]:
            checker = importlib.import_module(f"jepsen.checkers.{module}")
            results[name] = checker.check(mine, **options(module, ops))
    return results


def verdict(results: dict, error=None) -> dict:
    from jepsen.checkers import compose
    out = compose(results) if results else {"valid": False}
    out = dict(out, checkers=results)
    if error is not None:
        out.update(valid=False, error=repr(error))
    return out
