"""Invariant 2: an acknowledged task result is never lost or changed, and a completed task
is not run again (at-least-once only while its attempt is unacknowledged).

Ops (key = workflow id throughout):
  start      client op, as for checkers.workflows; ok = the workflow was acknowledged.
  result     client op: a read of a finished workflow's result, during the run and once at
             the end. ok value: {"results": {task_key: result, ...},
                                 "expected": {task_key: what it must be, ...}}  (optional)
             or just {task_key: result, ...}.
  exec       stand-alone record (process "worker:<pid>", type ok), one per execution of a
             task, from the exec log: value {"workflow_id": str, "key": task key,
             "attempt": int}.
  completed  the attempt each TaskCompleted event names, read from the workflow's history
             at the end (a client op or a record): ok value {"workflow_id", "key",
             "attempt"}.

Rules (opts: expected(workflow_id, task_key) -> value, overriding what ops embed;
task_keys: every finished result must hold these; workload: only that workload's ops):
- two ok result reads of one workflow disagree on a task's result     -> "changed"
- a read lacks a task result an earlier read (completed before it began) had -> "result-lost"
- a result differs from the expected value                           -> "wrong-result"
- an ok-started workflow with no ok result read at all               -> "result-missing"
  (if some result read was tried but none was ok: "unread", verdict unknown)
- a result read lacking one of opts["task_keys"]                     -> "result-missing"
- one task completed with two different attempts                      -> "completed-twice"
- an execution with attempt > the completed attempt                   -> "ran-after-completion"
- two executions of the same attempt                                  -> "duplicate-attempt"
- a completed attempt with no execution record (if the history has any exec records)
                                                                      -> "completed-not-executed"
All of these are invalid except "unread".

"ran-after-completion" needs no timing: Coda fences attempts (every assignment has a fresh
attempt number and only the running attempt can complete, flow/sm_tasks.py), so once
attempt n completed no attempt > n may ever have been assigned.
"""

from __future__ import annotations

from collections import defaultdict

from jepsen.checkers._common import Findings, client_ops, records, value_field
from jepsen.history import Op


def check(ops: list[dict], *, expected=None, task_keys=None, workload: str | None = None,
          max_anomalies: int = 20, **_ignored) -> dict:
    findings = Findings(max_anomalies)
    reads = client_ops(ops, ("result",), workload)
    starts = [op for op in client_ops(ops, ("start",), workload) if op.type == "ok"]
    counts = _check_results(reads, starts, expected, task_keys, findings)
    counts.update(_check_executions(records(ops, "exec", workload),
                                    records(ops, "completed", workload), findings))
    return findings.result(**counts)


def _split(value) -> tuple[dict, dict]:
    """(results, embedded expectations) of a result read's ok value."""
    if isinstance(value, dict) and isinstance(value.get("results"), dict):
        return value["results"], value.get("expected") or {}
    return (value if isinstance(value, dict) else {}), {}


def _check_results(reads: list[Op], starts: list[Op], expected, task_keys,
                   findings: Findings) -> dict:
    per_workflow: dict = defaultdict(list)
    for op in reads:
        per_workflow[op.key].append(op)
    for workflow_id, attempts in per_workflow.items():
        ok = sorted((op for op in attempts if op.type == "ok"), key=lambda o: o.complete_index)
        _compare_reads(workflow_id, ok, expected, task_keys, findings)
    for start in starts:
        attempts = per_workflow.get(start.key, [])
        if any(op.type == "ok" for op in attempts):
            continue
        if attempts:
            findings.unsure("unread", start.indexes + [i for op in attempts for i in op.indexes],
                            workflow_id=start.key, why="no result read was ok")
        else:
            findings.add("result-missing", start.indexes, workflow_id=start.key,
                         why="acknowledged, but no result read at the end")
    return {"result_reads": sum(op.type == "ok" for op in reads),
            "workflows_read": len(per_workflow), "acked_workflows": len(starts)}


def _compare_reads(workflow_id, ok: list[Op], expected, task_keys, findings: Findings) -> None:
    first_seen: dict = {}  # task key -> (result, the read that first showed it)
    for read in ok:
        results, embedded = _split(read.result)
        for task_key, result in results.items():
            want = expected(workflow_id, task_key) if expected else embedded.get(task_key, result)
            if result != want:
                findings.add("wrong-result", read.indexes, workflow_id=workflow_id,
                             task=task_key, result=result, expected=want)
            if task_key not in first_seen:
                first_seen[task_key] = (result, read)
            elif first_seen[task_key][0] != result:
                before = first_seen[task_key][1]
                findings.add("changed", before.indexes + read.indexes, workflow_id=workflow_id,
                             task=task_key, was=first_seen[task_key][0], now=result)
        for task_key, (result, before) in first_seen.items():
            if task_key not in results and before.complete_index < read.invoke_index:
                findings.add("result-lost", before.indexes + read.indexes,
                             workflow_id=workflow_id, task=task_key, was=result)
        missing = [k for k in (task_keys or ()) if k not in results]
        if missing:
            findings.add("result-missing", read.indexes, workflow_id=workflow_id,
                         missing=missing)


def _task_of(record: dict) -> tuple:
    value = record.get("value")
    workflow_id = value_field(value, "workflow_id", record.get("key"))
    return workflow_id, value_field(value, "key"), value_field(value, "attempt")


def _check_executions(execs: list[dict], completions: list[dict], findings: Findings) -> dict:
    completed: dict = defaultdict(dict)   # (workflow id, task key) -> attempt -> record
    for record in completions:
        workflow_id, key, attempt = _task_of(record)
        completed[(workflow_id, key)].setdefault(attempt, record)
    ran: dict = defaultdict(list)         # (workflow id, task key, attempt) -> records
    for record in execs:
        ran[_task_of(record)].append(record)
    for task, by_attempt in completed.items():
        if len(by_attempt) > 1:
            findings.add("completed-twice", [r["index"] for r in by_attempt.values()],
                         workflow_id=task[0], task=task[1], attempts=sorted(by_attempt))
    for (workflow_id, key, attempt), runs in ran.items():
        if len(runs) > 1:
            findings.add("duplicate-attempt", [r["index"] for r in runs],
                         workflow_id=workflow_id, task=key, attempt=attempt)
        done = completed.get((workflow_id, key))
        if done and all(_after(attempt, a) for a in done):
            last = max(done, key=lambda a: a if isinstance(a, int) else -1)
            findings.add("ran-after-completion", [r["index"] for r in runs]
                         + [done[last]["index"]], workflow_id=workflow_id, task=key,
                         attempt=attempt, completed_attempt=last)
    if execs:
        for (workflow_id, key), by_attempt in completed.items():
            for attempt, record in by_attempt.items():
                if (workflow_id, key, attempt) not in ran:
                    findings.add("completed-not-executed", [record["index"]],
                                 workflow_id=workflow_id, task=key, attempt=attempt)
    attempts_run: dict = defaultdict(set)
    for workflow_id, key, attempt in ran:
        attempts_run[(workflow_id, key)].add(attempt)
    retried = sum(1 for attempts in attempts_run.values() if len(attempts) > 1)
    return {"executions": len(execs), "tasks_completed": len(completed),
            "tasks_retried": retried}


def _after(attempt, completed_attempt) -> bool:
    return isinstance(attempt, int) and isinstance(completed_attempt, int) \
        and attempt > completed_attempt
