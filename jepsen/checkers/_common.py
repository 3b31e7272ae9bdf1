"""What every checker shares: picking its ops out of a history, and the result shape.

A checker's result: {"valid": True | False | "unknown", <counts>, "anomaly_counts":
{kind: n}, "anomalies": [at most max_anomalies dicts, each with "kind", "ops" (op indexes)
and what was seen], "anomalies_truncated": bool}.
"""

from __future__ import annotations

from collections import Counter

from jepsen.history import Op, pair

MAX_ANOMALIES = 20


class Findings:
    """Anomalies, counted in full and kept up to a bound (a bad run has thousands; the
    report needs a few concrete ones). Some kinds only make the verdict unknown."""

    def __init__(self, max_anomalies: int = MAX_ANOMALIES):
        self.max_anomalies = max_anomalies
        self.counts: Counter = Counter()
        self.kept: list[dict] = []
        self.unknown_kinds: set[str] = set()
        self.invalid = False

    def add(self, kind: str, ops: list, **detail) -> None:
        """An anomaly that fails the run."""
        self.invalid = True
        self._keep(kind, ops, detail)

    def unsure(self, kind: str, ops: list, **detail) -> None:
        """Something the history cannot decide: makes the verdict unknown, not False."""
        self.unknown_kinds.add(kind)
        self._keep(kind, ops, detail)

    def _keep(self, kind: str, ops: list, detail: dict) -> None:
        self.counts[kind] += 1
        if len(self.kept) < self.max_anomalies:
            self.kept.append({"kind": kind, "ops": sorted(set(ops)), **detail})

    def result(self, **counts) -> dict:
        valid = False if self.invalid else ("unknown" if self.unknown_kinds else True)
        return {"valid": valid, **counts, "anomaly_counts": dict(self.counts),
                "anomalies": self.kept,
                "anomalies_truncated": sum(self.counts.values()) > len(self.kept)}


def select(ops: list[dict], fs: tuple[str, ...], workload: str | None = None) -> list[dict]:
    """The ops with f in fs (and of `workload`, when given). An invoke and its completion
    share f, so the selection still pairs."""
    return [op for op in ops if op.get("f") in fs
            and (workload is None or op.get("workload") == workload)]


def client_ops(ops: list[dict], fs: tuple[str, ...], workload: str | None = None) -> list[Op]:
    return pair(select(ops, fs, workload))


def records(ops: list[dict], f: str, workload: str | None = None) -> list[dict]:
    """Observations of f: every type-ok op of f, whichever process wrote it (an exec-log
    record, which stands alone, or a client's ok completion: both say it was seen)."""
    return [op for op in select(ops, (f,), workload) if op.get("type") == "ok"]


def last_ok_by_key(operations: list[Op]) -> dict:
    """key -> the ok op that completed last (a final read repeated: the latest wins)."""
    latest: dict = {}
    for op in operations:
        if op.type == "ok":
            if op.key not in latest or op.complete_index > latest[op.key].complete_index:
                latest[op.key] = op
    return latest


def value_field(value, name: str, default=None):
    return value.get(name, default) if isinstance(value, dict) else default
