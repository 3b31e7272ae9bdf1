"""After a run: one history from three sources, the checkers' verdict, a timeline page.

Sources: the client's ops (client.jsonl), the nemesis's events (as ops of process
"nemesis", type info) and the task executions the workers logged (exec.jsonl, as ok ops
of process "worker"). All carry CLOCK_MONOTONIC times; the history is ordered by time
(stable, so each process keeps its own order) and numbered.
"""

from __future__ import annotations

import html
import json
import os

EXEC_OPS = {"exec": ("workflows", "exec"), "dequeue": ("queue", "dequeue"),
            "fired": ("timers", "fired")}


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a kill -9 mid-write: the rest still counts
    return out


def exec_ops(path: str, t0_ns: int) -> list[dict]:
    ops = []
    for rec in _read_jsonl(path):
        workload, f = EXEC_OPS[rec.pop("kind")]
        mono_ns = rec.pop("mono_ns")
        value = dict(rec, mono_ns_since_t0=mono_ns - t0_ns)
        ops.append({"time_ns": mono_ns - t0_ns, "process": "worker", "type": "ok", "f": f,
                    "workload": workload, "key": rec.get("workflow_id") or rec.get("item")
                    or rec.get("timer"), "value": value})
    return ops


def nemesis_ops(events: list[dict], t0_ns: int) -> list[dict]:
    return [{"time_ns": e["time_ns"] - t0_ns, "process": "nemesis", "type": "info",
             "f": f"{e['event']}-{e['kind']}", "workload": "nemesis", "key": None,
             "value": e["detail"]} for e in events]


def assemble(run, t0_ns: int) -> list[dict]:
    ops = (_read_jsonl(run.client_history) + exec_ops(run.exec_log, t0_ns)
           + nemesis_ops(run.hosts.events if run.hosts else [], t0_ns))
    ops.sort(key=lambda op: op["time_ns"])
    for index, op in enumerate(ops):
        op["index"] = index
    return ops


def fault_windows(ops: list[dict]) -> list[dict]:
    """[{kind, start_ns, end_ns}] from the nemesis's start/stop ops."""
    windows, open_ = [], {}
    for op in ops:
        if op["process"] != "nemesis":
            continue
        event, _, kind = op["f"].partition("-")
        if event == "start":
            open_[kind] = op["time_ns"]
        elif event == "stop" and kind in open_:
            windows.append({"kind": kind, "start_ns": open_.pop(kind), "end_ns": op["time_ns"]})
    end = max((op["time_ns"] for op in ops), default=0)
    windows += [{"kind": k, "start_ns": t, "end_ns": end} for k, t in open_.items()]
    return windows


def write_jsonl(path: str, ops: list[dict]) -> None:
    with open(path, "w") as f:
        for op in ops:
            f.write(json.dumps(op, separators=(",", ":"), default=str) + "\n")


def finish(run, t0_ns: int, error, wall_s: float) -> dict:
    from jepsen import check
    ops = assemble(run, t0_ns)
    write_jsonl(os.path.join(run.dir, "history.jsonl"), ops)
    write_jsonl(os.path.join(run.dir, "nemesis.jsonl"),
                [op for op in ops if op["process"] == "nemesis"])
    results = check.check_all(ops, run.workloads) if error is None else {}
    verdict = check.verdict(results, error=error)
    verdict.update({"workloads": run.workloads, "nemesis": run.nemesis, "seed": run.seed,
                    "time_s": run.time_s, "wall_s": round(wall_s, 1), "ops": len(ops),
                    "hosts": run.hosts.mode if run.hosts else None,
                    "faults": fault_windows(ops)})
    with open(os.path.join(run.dir, "verdict.json"), "w") as f:
        json.dump(verdict, f, indent=2, default=str)
    timeline(os.path.join(run.dir, "timeline.html"), ops, verdict)
    return verdict


COLORS = {"ok": "#2a9d4b", "fail": "#c0392b", "info": "#e6a700"}


def timeline(path: str, ops: list[dict], verdict: dict) -> None:
    """An SVG of completed ops over time, one row per workload, faults shaded."""
    lanes = sorted({op["workload"] for op in ops if op["process"] not in ("nemesis", "worker")})
    end_ns = max((op["time_ns"] for op in ops), default=1) or 1
    width, row_h, left = 1200, 28, 110
    x = lambda ns: left + (width - left - 10) * ns / end_ns  # noqa: E731
    parts = []
    height = row_h * (len(lanes) + 1) + 20
    for w in verdict.get("faults", []):
        parts.append(f'<rect x="{x(w["start_ns"]):.1f}" y="0" width="'
                     f'{max(1.0, x(w["end_ns"]) - x(w["start_ns"])):.1f}" height="{height}" '
                     f'fill="#d0d8ff" opacity="0.6"><title>{html.escape(w["kind"])}</title></rect>')
    for row, lane in enumerate(lanes):
        y = 20 + row * row_h
        parts.append(f'<text x="4" y="{y + 14}" font-size="12">{html.escape(lane)}</text>')
        for op in ops:
            if op["workload"] == lane and op["type"] in COLORS and op["process"] != "worker":
                parts.append(f'<rect x="{x(op["time_ns"]):.1f}" y="{y}" width="1.5" '
                             f'height="{row_h - 8}" fill="{COLORS[op["type"]]}"/>')
    summary = html.escape(json.dumps({k: v for k, v in verdict.items() if k != "faults"},
                                     indent=2, default=str))
    page = (f"<!doctype html><meta charset=utf-8><title>jepsen {html.escape(str(verdict.get('nemesis')))}"
            f"</title><h1>valid: {html.escape(str(verdict.get('valid')))}</h1>"
            f"<p>{len(ops)} ops over {end_ns / 1e9:.1f} s; ok green, fail red, info amber; "
            f"fault windows shaded blue.</p>"
            f'<svg width="{width}" height="{height}" font-family="sans-serif">{"".join(parts)}</svg>'
            f"<pre>{summary}</pre>")
    with open(path, "w") as f:
        f.write(page)
