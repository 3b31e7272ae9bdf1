"""Invariant 4, for state that only grows (a workflow's counter read by clients): reads never
go back in time, and never show more increments than were sent.

Ops (client ops, paired; key = the workflow / counter id):
  read  ok value: a number, or {"value": number}.
  inc   (optional) one increment sent; its outcome does not matter unless fail.

Rules (per key; opts: read_f, inc_f to rename the ops, initial (default 0), workload):
- "went-backwards": read B began after read A completed (A's completion index < B's invoke
  index) and B's value < A's. Names A and B; A is the highest completed read before B.
- "too-high": a read's value exceeds initial + the number of incs (ok, info or never
  completed; fail ones surely did not happen) invoked before the read completed. Checked
  only for keys that have inc ops.
- a read whose value is not a number: "bad-value".
"""

from __future__ import annotations

from collections import defaultdict

from jepsen.checkers._common import Findings, client_ops
from jepsen.history import Op


def _number(value):
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check(ops: list[dict], *, read_f: str = "read", inc_f: str = "inc", initial=0,
          workload: str | None = None, max_anomalies: int = 20, **_ignored) -> dict:
    findings = Findings(max_anomalies)
    per_key: dict = defaultdict(list)
    for op in client_ops(ops, (read_f, inc_f), workload):
        per_key[op.key].append(op)
    reads = 0
    for key, operations in per_key.items():
        reads += _check_key(key, operations, read_f, inc_f, initial, findings)
    return findings.result(keys=len(per_key), reads=reads)


def _check_key(key, operations: list[Op], read_f: str, inc_f: str, initial,
               findings: Findings) -> int:
    """Sweep the key's events in history order; returns how many ok reads it had."""
    events = []  # (index, order on ties, kind, op)
    has_incs = any(op.f == inc_f for op in operations)
    for op in operations:
        if op.f == inc_f and op.type != "fail":
            events.append((op.invoke_index, 0, "inc", op))
        elif op.f == read_f and op.type == "ok":
            events.append((op.invoke_index, 0, "begin", op))
            events.append((op.complete_index, 1, "end", op))
    events.sort(key=lambda e: (e[0], e[1]))
    highest, highest_op = None, None  # the highest completed read so far
    floor: dict = {}                  # read -> (highest, its op) when it began
    incs, reads = 0, 0
    for _index, _order, kind, op in events:
        if kind == "inc":
            incs += 1
        elif kind == "begin":
            floor[op.invoke_index] = (highest, highest_op)
        else:
            reads += 1
            value = _number(op.result)
            if value is None:
                findings.add("bad-value", op.indexes, key=key, value=op.result)
                continue
            low, low_op = floor.pop(op.invoke_index)
            if low is not None and value < low:
                findings.add("went-backwards", low_op.indexes + op.indexes, key=key,
                             earlier=low, later=value)
            if has_incs and value > initial + incs:
                findings.add("too-high", op.indexes, key=key, value=value,
                             incs_sent=incs, initial=initial)
            if highest is None or value > highest:
                highest, highest_op = value, op
    return reads
