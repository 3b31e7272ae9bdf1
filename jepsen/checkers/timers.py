"""Invariant 5: a durable timer fires exactly once, and never early.

Ops (key = timer id = its workflow id):
  start-timer  client op. invoke value: {"delay_ms": int, "wall_ms": client wall clock
               at invoke (optional)}; ok: acknowledged, fail: surely not started, info:
               unknown. The invoke's time_ns is the earliest the timer can have started.
  fired        stand-alone record (process "worker:<pid>", type ok), written when the
               workflow resumed after its timer (the exec log): time_ns = the run's
               monotonic time then; value {"timer": id, "attempt": int (optional),
               "wall_ms": that process's wall clock (optional), "start_wall_ms": the
               client's wall clock at the start-timer invoke (optional; or the invoke's
               "wall_ms")}.
  final-timer  client op at the end, from the workflow's history: ok value {"fired": n
               (TimerFired events), "fire_at_ms": TimerStarted.fire_at_ms (optional),
               "started_ms": TimerStarted.time_ms (optional), "fired_ms": [each
               TimerFired.time_ms] (optional)}; the last ok one counts.

Never early, on each clock the ops give (opts: tolerance_ms, default 5, for the first two;
leader_tolerance_ms, default 0, for the third):
  real time:  fired.time_ns - start-timer invoke time_ns >= delay_ms - tolerance_ms. Both
              on CLOCK_MONOTONIC, which the clock nemesis does not touch. Invariant 5 is
              about the leader's clock: a leader whose wall clock runs X ms fast fires
              X ms early in real time, legally; under a clock nemesis pass tolerance_ms
              >= the largest forward skew (or realtime=False).
  wall clock: fired wall_ms - start wall_ms >= delay_ms - tolerance_ms (when both given).
  leader:     every fired_ms >= fire_at_ms - leader_tolerance_ms, and fire_at_ms -
              started_ms >= delay_ms (when given).

Rules (all invalid): "never-fired" (an acked start whose final count is 0, or with no final
count and no fired record), "fired-twice" (final count > 1, or two fired records with the
same attempt, or without attempts), "early" (names the clock), "resumed-without-fire"
(a fired record but a final count of 0), "unexpected" (fired, but every start failed or
none was made). Not flagged: a timer whose final read saw it started and due after the
read ("not_due": a leader clock running fast set its time far ahead; it is late, never
early). Counted: "recovered" (an info start that fired), "unverified" (fired
records but no final count), "retried" (fired records with different attempts).
"""

from __future__ import annotations

from collections import defaultdict

from jepsen.checkers._common import Findings, client_ops, last_ok_by_key, records, value_field
from jepsen.history import Op


def check(ops: list[dict], *, tolerance_ms: float = 5, leader_tolerance_ms: float = 0,
          realtime: bool = True, workload: str | None = None, max_anomalies: int = 20,
          **_ignored) -> dict:
    findings = Findings(max_anomalies)
    starts: dict = defaultdict(list)
    for op in client_ops(ops, ("start-timer",), workload):
        starts[op.key].append(op)
    fired: dict = defaultdict(list)
    for record in records(ops, "fired", workload):
        fired[value_field(record.get("value"), "timer", record.get("key"))].append(record)
    finals = last_ok_by_key(client_ops(ops, ("final-timer",), workload))
    counts = {"acked": 0, "fired_once": 0, "recovered": 0, "unverified": 0, "retried": 0,
              "not_due": 0}
    tolerances = {"tolerance_ms": tolerance_ms, "leader_tolerance_ms": leader_tolerance_ms,
                  "realtime": realtime}
    for timer in set(starts) | set(fired) | set(finals):
        _check_timer(timer, starts.get(timer, []), fired.get(timer, []), finals.get(timer),
                     tolerances, counts, findings)
    return findings.result(timers=len(starts), **counts)


NOT_DUE_SLACK_MS = 5000  # a timer due this long before the final read should have fired


def _not_due(final: Op | None) -> bool:
    """The final read saw the timer started, unfired and due after the read (its
    fire_at_ms, on the leader's clock when it started, lies ahead of the reader's clock):
    pending at the end, not lost. Needs both times in the final-timer op."""
    if final is None:
        return False
    fire_at_ms = value_field(final.result, "fire_at_ms")
    read_ms = value_field(final.result, "read_wall_ms")
    return (isinstance(fire_at_ms, int) and isinstance(read_ms, int)
            and fire_at_ms > read_ms - NOT_DUE_SLACK_MS)


def _check_timer(timer, attempts: list[Op], seen: list[dict], final: Op | None,
                 tolerances: dict, counts: dict, findings: Findings) -> None:
    types = {op.type for op in attempts}
    named = [i for op in attempts for i in op.indexes] + [r["index"] for r in seen] \
        + (final.indexes if final else [])
    n_fired = value_field(final.result, "fired") if final else None
    happened = bool(seen) or (n_fired or 0) > 0
    counts["acked"] += "ok" in types
    if happened and not types & {"ok", "info"}:
        findings.add("unexpected", named, timer=timer, fired=n_fired)
        return
    if not happened:
        if "ok" in types and _not_due(final):
            counts["not_due"] += 1
        elif "ok" in types:
            findings.add("never-fired", named, timer=timer, final_count=n_fired)
        return
    counts["recovered"] += "ok" not in types
    if n_fired is None:
        counts["unverified"] += 1
    elif n_fired == 0:
        findings.add("resumed-without-fire", named, timer=timer)
    elif n_fired > 1:
        findings.add("fired-twice", named, timer=timer, final_count=n_fired)
    else:
        counts["fired_once"] += 1
    _check_records(timer, seen, named, counts, findings)
    started = [op for op in attempts if op.type != "fail"]
    _check_early(timer, started, seen, final, tolerances, findings)


def _check_records(timer, seen: list[dict], named: list, counts: dict,
                   findings: Findings) -> None:
    attempts = [value_field(r.get("value"), "attempt") for r in seen]
    if len(seen) > 1:
        if None in attempts or len(set(attempts)) < len(attempts):
            findings.add("fired-twice", [r["index"] for r in seen], timer=timer,
                         attempts=attempts, evidence="two resumptions with one attempt")
        else:
            counts["retried"] += 1


def _check_early(timer, started: list[Op], seen: list[dict], final: Op | None,
                 tolerances: dict, findings: Findings) -> None:
    first = min(started, key=lambda op: op.invoke_index)  # the earliest it could start
    delay_ms = value_field(first.argument, "delay_ms")
    if not isinstance(delay_ms, (int, float)):
        findings.add("bad-start", first.indexes, timer=timer, argument=first.argument)
        return
    slack_ms = tolerances["tolerance_ms"]
    for record in seen:
        value = record.get("value") or {}
        waited_ms = (record["time_ns"] - first.invoke["time_ns"]) / 1e6
        if tolerances["realtime"] and waited_ms < delay_ms - slack_ms:
            findings.add("early", first.indexes + [record["index"]], timer=timer,
                         clock="real time", delay_ms=delay_ms, waited_ms=round(waited_ms, 3))
        start_wall_ms = value.get("start_wall_ms", value_field(first.argument, "wall_ms"))
        if value.get("wall_ms") is not None and start_wall_ms is not None \
                and value["wall_ms"] - start_wall_ms < delay_ms - slack_ms:
            findings.add("early", first.indexes + [record["index"]], timer=timer,
                         clock="wall", delay_ms=delay_ms,
                         waited_ms=value["wall_ms"] - start_wall_ms)
    if final is not None:
        _check_leader_clock(timer, delay_ms, first, final, tolerances, findings)


def _check_leader_clock(timer, delay_ms, first: Op, final: Op, tolerances: dict,
                        findings: Findings) -> None:
    value = final.result if isinstance(final.result, dict) else {}
    fire_at_ms = value.get("fire_at_ms")
    if fire_at_ms is None:
        return
    named = first.indexes + final.indexes
    started_ms = value.get("started_ms")
    if started_ms is not None and fire_at_ms - started_ms < delay_ms:
        findings.add("early", named, timer=timer, clock="leader", delay_ms=delay_ms,
                     why=f"fire_at_ms is {fire_at_ms - started_ms} ms after the start")
    for fired_ms in value.get("fired_ms") or ():
        if fired_ms < fire_at_ms - tolerances["leader_tolerance_ms"]:
            findings.add("early", named, timer=timer, clock="leader", fire_at_ms=fire_at_ms,
                         fired_ms=fired_ms, early_ms=fire_at_ms - fired_ms)
