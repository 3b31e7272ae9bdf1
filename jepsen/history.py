"""Jepsen-style histories: what the clients did and saw, one op (a dict) per event.

An op:

    {"index":    int,   position in the history (0, 1, 2, ...); anomalies name ops by it
     "time_ns":  int,   CLOCK_MONOTONIC ns since the run started (t0), shared by every
                        process on the machine and untouched by the clock nemesis
     "process":  int | str,
                        int: a client process (its ops come in invoke/completion pairs);
                        str: a non-client source whose records stand alone: "nemesis",
                        or "worker:<pid>" for task-execution records from the exec log
     "type":     "invoke" | "ok" | "fail" | "info",
     "f":        str,   the operation ("start", "read", "enqueue", ...)
     "workload": str,   which workload emitted it ("workflows", "register", ...)
     "key":      str | None,   the object it is about (workflow id, register name, ...)
     "value":    any JSON}     invoke: the argument; completion: the answer (or error)

Rules for client processes (int):
- A process does one thing at a time: its invoke is completed by *its next op*, which
  must be a completion ("ok", "fail" or "info") with the same f and key.
- ok: it happened, and `value` is the answer. fail: it surely did not happen.
  info: unknown; it may have taken effect at any time after its invoke, or never.
- An invoke with no completion by the end of the history counts as info.

Records of non-client processes (str) are not paired: an execution record is one
{"type": "ok", ...} op whose time_ns is when it was observed (the exec log's mono_ns
minus t0). Nemesis ops are kept for the timeline; no checker reads them.

The order of the history is real time: when op A's completion comes before op B's invoke
(A's completion index < B's invoke index), A finished before B began. A history file is
JSON Lines, one op per line; `load` numbers the ops by line, and `merge` interleaves
several streams (client, exec log, nemesis) by time_ns.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

TYPES = ("invoke", "ok", "fail", "info")
COMPLETIONS = ("ok", "fail", "info")
FIELDS = ("index", "time_ns", "process", "type", "f", "workload", "key", "value")


class HistoryError(ValueError):
    """The history is not well formed (names the op index and why)."""


def is_client(op: dict) -> bool:
    """Client ops (int process) come in pairs; everything else stands alone."""
    process = op.get("process")
    return isinstance(process, int) and not isinstance(process, bool)


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation: its invoke and its completion (None: never completed)."""
    invoke: dict
    completion: dict | None

    @property
    def type(self) -> str:
        """"ok", "fail" or "info" (an op that never completed is info)."""
        return self.completion["type"] if self.completion is not None else "info"

    @property
    def process(self):
        return self.invoke["process"]

    @property
    def f(self) -> str:
        return self.invoke["f"]

    @property
    def key(self):
        return self.invoke.get("key")

    @property
    def workload(self):
        return self.invoke.get("workload")

    @property
    def argument(self) -> Any:
        """The invoke's value (what was asked)."""
        return self.invoke.get("value")

    @property
    def result(self) -> Any:
        """The ok completion's value (what was answered); None unless ok."""
        return self.completion.get("value") if self.type == "ok" else None

    @property
    def invoke_index(self) -> int:
        return self.invoke["index"]

    @property
    def complete_index(self) -> float:
        """The completion's index; +inf when the outcome is unknown (info or open),
        since such an op may take effect at any later time."""
        return self.completion["index"] if self.type in ("ok", "fail") else math.inf

    @property
    def indexes(self) -> list[int]:
        """The op indexes of its records, for naming it in an anomaly."""
        done = [self.completion["index"]] if self.completion is not None else []
        return [self.invoke["index"], *done]


# --- well-formedness ----------------------------------------------------------------------

def _check_fields(op: dict, position: int) -> None:
    if not isinstance(op, dict):
        raise HistoryError(f"op at position {position} is not a JSON object: {op!r}")
    missing = [k for k in ("index", "process", "type", "f") if k not in op]
    if missing:
        raise HistoryError(f"op at position {position} lacks {missing}: {op!r}")
    if op["type"] not in TYPES:
        raise HistoryError(f"op {op['index']}: type {op['type']!r} is not one of {TYPES}")


def pair(ops: Iterable[dict]) -> list[Op]:
    """The client ops as (invoke, completion) pairs, in invoke order. Non-client records
    are skipped (see `events`). Raises HistoryError on a completion with no invoke, two
    invokes in a row by one process, or a completion whose f/key differ from its
    invoke's."""
    ops = list(ops)
    for position, op in enumerate(ops):
        _check_fields(op, position)
    pending: dict[int, dict] = {}   # process -> its open invoke
    pairs: dict[int, Op] = {}       # invoke index -> its op
    for op in sorted(ops, key=lambda o: o["index"]):
        if not is_client(op):
            continue
        process = op["process"]
        if op["type"] == "invoke":
            if process in pending:
                raise HistoryError(
                    f"op {op['index']}: process {process} invokes again while op "
                    f"{pending[process]['index']} is still open")
            pending[process] = op
            pairs[op["index"]] = Op(op, None)
            continue
        invoke = pending.pop(process, None)
        if invoke is None:
            raise HistoryError(
                f"op {op['index']}: a {op['type']} of process {process} with no invoke "
                "(records that stand alone need a str process, e.g. 'worker:<pid>')")
        if (invoke["f"], invoke.get("key")) != (op["f"], op.get("key")):
            raise HistoryError(
                f"op {op['index']}: completes {op['f']}/{op.get('key')!r} but the open "
                f"invoke {invoke['index']} is {invoke['f']}/{invoke.get('key')!r}")
        pairs[invoke["index"]] = Op(invoke, op)
    return list(pairs.values())


def validate(ops: Iterable[dict]) -> None:
    """Raise HistoryError unless the history is well formed."""
    pair(ops)


def events(ops: Iterable[dict], f: str | None = None) -> list[dict]:
    """The records of non-client processes (nemesis, workers), optionally only f's."""
    return [op for op in ops if not is_client(op) and (f is None or op.get("f") == f)]


def by_workload(ops: Iterable[dict]) -> dict[str, list[dict]]:
    """Ops grouped by workload, in history order, indexes unchanged."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for op in ops:
        groups[op.get("workload")].append(op)
    return dict(groups)


def by_key(ops: Iterable[dict]) -> dict[Any, list[dict]]:
    """Ops grouped by key, in history order, indexes unchanged. An invoke and its
    completion share a key, so each group pairs on its own."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for op in ops:
        groups[op.get("key")].append(op)
    return dict(groups)


# --- files ---------------------------------------------------------------------------------

def load(path: str) -> list[dict]:
    """A JSONL history; each op's index is set to its line's position (blank lines
    skipped). A truncated last line (the writer died mid-line) is dropped."""
    ops: list[dict] = []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    for number, line in enumerate(lines):
        try:
            op = json.loads(line)
        except ValueError as exc:
            if number == len(lines) - 1:
                break  # a torn final write, not a malformed history
            raise HistoryError(f"{path}: line {number + 1} is not JSON: {exc}") from exc
        op["index"] = len(ops)
        ops.append(op)
    return ops


def merge(*streams: Iterable[dict]) -> list[dict]:
    """One history from several (client ops, exec-log records, nemesis events): ordered
    by time_ns (stable, so each stream keeps its own order on ties), then renumbered."""
    ops = [dict(op) for stream in streams for op in stream]
    ops.sort(key=lambda op: op["time_ns"])
    for index, op in enumerate(ops):
        op["index"] = index
    return ops


def dump(ops: Iterable[dict], path: str) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(_line(op))


def _line(op: dict) -> str:
    return json.dumps(op, separators=(",", ":"), default=str) + "\n"


class History:
    """Records a history as it happens: in memory, and appended to `path` (JSONL) when
    given. Thread-safe (a lock around each append), and safe from asyncio since nothing
    here awaits. Each append is validated, so a client bug shows at once, not at check
    time."""

    def __init__(self, path: str | None = None, *, t0_ns: int | None = None, clock=None):
        import time
        self._clock = clock or time.monotonic_ns  # injectable for tests
        self.t0_ns = self._clock() if t0_ns is None else t0_ns
        self._lock = threading.Lock()
        self._ops: list[dict] = []
        self._open: dict[Any, dict] = {}  # client process -> its pending invoke
        self._file = open(path, "a", buffering=1) if path else None

    def _append(self, op: dict) -> dict:
        op = {"index": len(self._ops), "time_ns": self._clock() - self.t0_ns, **op}
        self._ops.append(op)
        if self._file is not None:
            self._file.write(_line(op))
        return op

    def invoke(self, process: int, f: str, workload: str, key=None, value=None) -> dict:
        with self._lock:
            if process in self._open:
                raise HistoryError(f"process {process} invokes {f} while op "
                                   f"{self._open[process]['index']} is still open")
            op = self._append({"process": process, "type": "invoke", "f": f,
                               "workload": workload, "key": key, "value": value})
            self._open[process] = op
            return op

    def complete(self, process: int, type_: str, value=None) -> dict:
        """Complete `process`'s open invoke: type_ is "ok", "fail" or "info"."""
        if type_ not in COMPLETIONS:
            raise HistoryError(f"completion type {type_!r} is not one of {COMPLETIONS}")
        with self._lock:
            invoke = self._open.pop(process, None)
            if invoke is None:
                raise HistoryError(f"process {process} completes ({type_}) with no invoke")
            return self._append({"process": process, "type": type_, "f": invoke["f"],
                                 "workload": invoke["workload"], "key": invoke["key"],
                                 "value": value})

    def event(self, source: str, f: str, workload: str, key=None, value=None,
              type_: str = "ok", time_ns: int | None = None) -> dict:
        """A record that stands alone (nemesis action, task execution); `source` is a
        str process. time_ns: when it happened, if not now."""
        if is_client({"process": source}):
            raise HistoryError(f"event source must be a str, not {source!r}")
        with self._lock:
            op = {"process": source, "type": type_, "f": f, "workload": workload,
                  "key": key, "value": value}
            if time_ns is not None:
                op["time_ns"] = time_ns
            return self._append(op)

    @property
    def ops(self) -> list[dict]:
        with self._lock:
            return list(self._ops)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
