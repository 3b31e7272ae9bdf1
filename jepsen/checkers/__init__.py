"""The checkers: each is `check(ops, **opts) -> dict` over a history (jepsen.history), with
"valid" True, False or "unknown", counts, and a bounded list of anomalies naming op indexes.
Each module's docstring gives the exact ops it reads and the rules it holds them to.

    workflows     acknowledged starts end in exactly one terminal state (invariants 1, 3)
    tasks         task results never lost or changed, no rerun after completion (2)
    linearizable  per-key linearizability of a (versioned CAS) register (4)
    monotonic     reads of growing state never go back (4)
    queue         total queue: nothing lost, no unexplained duplicates
    timers        durable timers fire exactly once, never early (5)
"""

from __future__ import annotations

from jepsen.checkers import linearizable, monotonic, queue, tasks, timers, workflows

CHECKERS = {"workflows": workflows.check, "tasks": tasks.check,
            "linearizable": linearizable.check, "monotonic": monotonic.check,
            "queue": queue.check, "timers": timers.check}


def compose(results: dict) -> dict:
    """The overall verdict of several checkers' results ({name: result}): False if any is
    False, else "unknown" if any is unknown (an undecided check is not a pass), else
    True. No results at all is "unknown": nothing was checked."""
    verdicts = {name: result.get("valid") for name, result in results.items()}
    failed = sorted(name for name, v in verdicts.items() if v is False)
    unknown = sorted(name for name, v in verdicts.items() if v is not True and v is not False)
    if failed:
        valid = False
    elif unknown or not verdicts:
        valid = "unknown"
    else:
        valid = True
    return {"valid": valid, "checkers": verdicts, "failed": failed, "unknown": unknown}
