"""Invariants 1 and 3: an acknowledged workflow start ends in exactly one terminal state,
in the run it was acknowledged with, and a workflow id never gets a second run.

Ops (client ops, paired; key = workflow id):
  start   invoke value: the workflow's args (not read)
          ok value: {"run_id": str}            acknowledged
          fail: surely not started (e.g. rejected as a duplicate)
          info: unknown
  final   one read per workflow at the end, after the cluster healed and every start that
          may have happened was waited for. ok value:
          {"status": str | None, "run_id": str | None, "runs": int}
          status None / runs 0: no such workflow; runs: how many runs the id has had.
          When a workflow has several ok finals, the last one counts.

Rules (opts: expected_statuses, default {"COMPLETED"}; workload: only that workload's ops):
- ok start, final says absent                           -> "lost"            (invalid)
- ok start, final status not in expected_statuses       -> "wrong-status"    (invalid)
- ok start, final run_id != the acknowledged run_id     -> "run-changed"     (invalid)
- any start, final runs > 1                             -> "multiple-runs"   (invalid)
- two ok starts of one id with different run ids        -> "duplicate-start" (invalid)
- info start, final present: "recovered" (counted); it must then also be in an expected
  status ("wrong-status"), since a workflow that exists must finish
- fail start(s) only, yet final says it exists          -> "failed-start-exists" (invalid)
- a final that finds a workflow nobody tried to start   -> "unexpected"      (invalid)
- ok start with no ok final (the read itself failed)    -> "unread"  (verdict unknown)
"""

from __future__ import annotations

from jepsen.checkers._common import Findings, client_ops, last_ok_by_key, value_field
from jepsen.history import Op

DEFAULT_EXPECTED = frozenset({"COMPLETED"})


def check(ops: list[dict], *, expected_statuses=DEFAULT_EXPECTED, workload: str | None = None,
          max_anomalies: int = 20, **_ignored) -> dict:
    expected = frozenset(expected_statuses)
    starts = client_ops(ops, ("start",), workload)
    finals = last_ok_by_key(client_ops(ops, ("final",), workload))
    findings = Findings(max_anomalies)
    by_id: dict = {}
    for op in starts:
        by_id.setdefault(op.key, []).append(op)
    counts = {"ok_starts": 0, "info_starts": 0, "fail_starts": 0, "recovered": 0,
              "finished": 0}
    for workflow_id, attempts in by_id.items():
        _check_one(workflow_id, attempts, finals.get(workflow_id), expected, findings, counts)
    for workflow_id, final in finals.items():
        if workflow_id not in by_id and _exists(final.result):
            findings.add("unexpected", final.indexes, workflow_id=workflow_id,
                         final=final.result)
    return findings.result(**counts)


def _exists(final_value) -> bool:
    return bool(value_field(final_value, "status")) or (value_field(final_value, "runs") or 0) > 0


def _check_one(workflow_id, attempts: list[Op], final: Op | None, expected: frozenset,
               findings: Findings, counts: dict) -> None:
    acked = [op for op in attempts if op.type == "ok"]
    maybe = [op for op in attempts if op.type == "info"]
    counts["ok_starts"] += len(acked)
    counts["info_starts"] += len(maybe)
    counts["fail_starts"] += len(attempts) - len(acked) - len(maybe)
    run_ids = {value_field(op.result, "run_id") for op in acked}
    if len(run_ids) > 1:
        findings.add("duplicate-start", [i for op in acked for i in op.indexes],
                     workflow_id=workflow_id, run_ids=sorted(map(str, run_ids)))
    start_indexes = [i for op in attempts for i in op.indexes]
    if final is None:
        if acked:
            findings.unsure("unread", start_indexes, workflow_id=workflow_id,
                            why="no ok final read of an acknowledged start")
        return
    seen = final.result if isinstance(final.result, dict) else {}
    named = start_indexes + final.indexes
    if not _exists(seen):
        if acked:
            findings.add("lost", named, workflow_id=workflow_id, final=seen)
        return
    if (seen.get("runs") or 0) > 1:
        findings.add("multiple-runs", named, workflow_id=workflow_id, runs=seen.get("runs"))
    if not acked and not maybe:
        findings.add("failed-start-exists", named, workflow_id=workflow_id, final=seen)
        return
    if not acked:
        counts["recovered"] += 1
    if seen.get("status") not in expected:
        findings.add("wrong-status", named, workflow_id=workflow_id,
                     status=seen.get("status"), expected=sorted(expected))
    else:
        counts["finished"] += 1
    if acked and len(run_ids) == 1 and seen.get("run_id") not in run_ids:
        findings.add("run-changed", named, workflow_id=workflow_id,
                     acknowledged=next(iter(run_ids)), final=seen.get("run_id"))
