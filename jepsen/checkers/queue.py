"""A total queue (Jepsen's total-queue): every acknowledged enqueue is delivered, nothing is
delivered that was not enqueued, and an item is delivered again only by a retry.

Ops:
  enqueue  client op, key = item id. ok: acknowledged; fail: surely not enqueued;
           info: unknown.
  dequeue  an observed delivery, any number per item: a stand-alone record (process
           "worker:<pid>", type ok; from the exec log) or a client's ok dequeue, with
           value {"item": item id, "attempt": int}. A delivery without "attempt" cannot
           be told apart from another: its duplicates count as unexplained.
  The history must end after the final drain (every enqueue that may have happened was
  waited for), so that an undelivered item is really lost.

Rules (opts: workload):
- lost: an ok enqueue never dequeued                                   (invalid)
- unexpected: a dequeued item never enqueued, or whose enqueues all failed (invalid)
- duplicated: an item dequeued more than once (counted); "explained" when every delivery
  has a different attempt (a redelivery after a crash), else "unexplained" (invalid)
- recovered: an info enqueue whose item was dequeued (counted, fine)
"""

from __future__ import annotations

from collections import defaultdict

from jepsen.checkers._common import Findings, client_ops, records, value_field


def check(ops: list[dict], *, workload: str | None = None, max_anomalies: int = 20,
          **_ignored) -> dict:
    findings = Findings(max_anomalies)
    enqueues: dict = defaultdict(list)
    for op in client_ops(ops, ("enqueue",), workload):
        enqueues[op.key].append(op)
    deliveries: dict = defaultdict(list)
    for record in records(ops, "dequeue", workload):
        deliveries[value_field(record.get("value"), "item", record.get("key"))].append(record)
    counts = {"enqueued_ok": 0, "enqueued_info": 0, "enqueued_fail": 0, "delivered": 0,
              "lost": 0, "recovered": 0, "unexpected": 0, "duplicated": 0,
              "duplicates_explained": 0, "duplicates_unexplained": 0}
    for item, attempts in enqueues.items():
        types = {op.type for op in attempts}
        for kind in ("ok", "info", "fail"):
            counts[f"enqueued_{kind}"] += sum(op.type == kind for op in attempts)
        named = [i for op in attempts for i in op.indexes]
        if item in deliveries:
            counts["delivered"] += 1
            if "ok" not in types and "info" in types:
                counts["recovered"] += 1
        elif "ok" in types:
            counts["lost"] += 1
            findings.add("lost", named, item=item)
    for item, seen in deliveries.items():
        tried = {op.type for op in enqueues.get(item, ())}
        if not tried & {"ok", "info"}:
            counts["unexpected"] += 1
            findings.add("unexpected", [r["index"] for r in seen], item=item,
                         why="enqueues all failed" if tried else "never enqueued")
        if len(seen) > 1:
            _duplicate(item, seen, counts, findings)
    return findings.result(**counts)


def _duplicate(item, seen: list[dict], counts: dict, findings: Findings) -> None:
    counts["duplicated"] += 1
    attempts = [value_field(r.get("value"), "attempt") for r in seen]
    if None not in attempts and len(set(attempts)) == len(attempts):
        counts["duplicates_explained"] += 1
        return
    counts["duplicates_unexplained"] += 1
    findings.add("unexplained-duplicate", [r["index"] for r in seen], item=item,
                 attempts=attempts)
