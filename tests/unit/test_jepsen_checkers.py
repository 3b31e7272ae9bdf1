"""The jepsen history format and checkers (issue #7): each checker passes a correct history
and flags histories with one seeded bug, naming the op involved.

The linearizability checker is also held against a brute-force oracle on small random
histories (hypothesis), and run on 1000-op histories of a simulated atomic register.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepsen import history as hist
from jepsen.checkers import compose, linearizable, monotonic, queue, tasks, timers, workflows
from jepsen.history import History, HistoryError


class Script:
    """Builds a history by hand: a History recorder on a clock the test moves (1 ms per
    op unless told), so ops get real indexes and times."""

    def __init__(self, workload: str = "w"):
        self.now_ns = 0
        self.workload = workload
        self.h = History(t0_ns=0, clock=lambda: self.now_ns)

    def tick(self, ms: float = 1) -> None:
        self.now_ns += int(ms * 1e6)

    def invoke(self, process, f, key=None, value=None) -> int:
        self.tick()
        return self.h.invoke(process, f, self.workload, key, value)["index"]

    def complete(self, process, type_, value=None) -> int:
        self.tick()
        return self.h.complete(process, type_, value)["index"]

    def op(self, process, f, key=None, value=None, type_="ok", result=None) -> tuple:
        """A whole op; returns (invoke index, completion index)."""
        return self.invoke(process, f, key, value), self.complete(process, type_, result)

    def record(self, f, key=None, value=None, source="worker:1") -> int:
        self.tick()
        return self.h.event(source, f, self.workload, key, value)["index"]

    @property
    def ops(self) -> list[dict]:
        return self.h.ops


def kinds(result: dict) -> list[str]:
    return [a["kind"] for a in result["anomalies"]]


def only(result: dict, kind: str) -> dict:
    found = [a for a in result["anomalies"] if a["kind"] == kind]
    assert found, f"no {kind!r} anomaly in {result['anomalies']}"
    return found[0]


# --- history ---------------------------------------------------------------------------------

def test_recorder_writes_jsonl_and_load_pairs_it(tmp_path):
    path = tmp_path / "h.jsonl"
    with History(str(path)) as h:
        h.invoke(0, "write", "register", "k", 1)
        h.invoke(1, "read", "register", "k")
        h.complete(0, "ok", {"version": 1})
        h.event("nemesis", "partition", "nemesis", value={"nodes": [1]})
        h.complete(1, "info", {"error": "timeout"})
        h.invoke(0, "read", "register", "k")  # never completed: info
        h.flush()
        assert len(path.read_text().splitlines()) == 6
    ops = hist.load(str(path))
    assert [op["index"] for op in ops] == list(range(6))
    assert all(set(hist.FIELDS) <= set(op) for op in ops)
    pairs = hist.pair(ops)
    assert [(p.f, p.type) for p in pairs] == [("write", "ok"), ("read", "info"), ("read", "info")]
    assert pairs[0].argument == 1 and pairs[0].result == {"version": 1}
    assert pairs[1].complete_index == float("inf") and pairs[0].complete_index == 2
    assert pairs[2].completion is None and pairs[2].indexes == [5]
    assert [op["f"] for op in hist.events(ops)] == ["partition"]
    assert set(hist.by_workload(ops)) == {"register", "nemesis"}
    assert len(hist.by_key(ops)["k"]) == 5


def test_load_drops_a_torn_last_line_but_not_a_bad_middle_one(tmp_path):
    good = json.dumps({"process": 0, "type": "invoke", "f": "read", "key": "k", "time_ns": 1})
    (tmp_path / "torn.jsonl").write_text(good + "\n" + good[:10])
    assert len(hist.load(str(tmp_path / "torn.jsonl"))) == 1
    (tmp_path / "bad.jsonl").write_text(good[:10] + "\n" + good + "\n")
    with pytest.raises(HistoryError, match="line 1"):
        hist.load(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("ops, message", [
    ([{"process": 0, "type": "ok", "f": "read"}], "with no invoke"),
    ([{"process": 0, "type": "invoke", "f": "read"},
      {"process": 0, "type": "invoke", "f": "read"}], "invokes again while op 0"),
    ([{"process": 0, "type": "invoke", "f": "read", "key": "a"},
      {"process": 0, "type": "ok", "f": "read", "key": "b"}], "open invoke 0"),
    ([{"process": 0, "type": "done", "f": "read"}], "not one of"),
    ([{"process": 0, "type": "ok"}], "lacks"),
])
def test_malformed_histories_raise_clear_errors(ops, message):
    ops = [dict(op, index=i) for i, op in enumerate(ops)]
    with pytest.raises(HistoryError, match=message):
        hist.validate(ops)


def test_recorder_refuses_what_would_be_malformed():
    h = History()
    with pytest.raises(HistoryError, match="no invoke"):
        h.complete(3, "ok")
    h.invoke(3, "read", "w")
    with pytest.raises(HistoryError, match="still open"):
        h.invoke(3, "read", "w")
    with pytest.raises(HistoryError, match="must be a str"):
        h.event(7, "exec", "w")


def test_merge_interleaves_streams_by_time_and_renumbers():
    client = [{"index": 0, "time_ns": 10, "process": 0, "type": "invoke", "f": "start"},
              {"index": 1, "time_ns": 30, "process": 0, "type": "ok", "f": "start"}]
    execs = [{"index": 0, "time_ns": 20, "process": "worker:9", "type": "ok", "f": "exec"}]
    merged = hist.merge(client, execs)
    assert [(op["index"], op["f"], op["type"]) for op in merged] == [
        (0, "start", "invoke"), (1, "exec", "ok"), (2, "start", "ok")]
    assert len(hist.pair(merged)) == 1


# --- workflows -------------------------------------------------------------------------------

def workflows_history():
    s = Script("workflows")
    s.op(0, "start", "wf-a", {}, "ok", {"run_id": "r-a"})
    s.op(1, "start", "wf-b", {}, "info", {"error": "timeout"})   # happened after all
    s.op(1, "start", "wf-c", {}, "info", {"error": "timeout"})   # never happened
    s.op(2, "start", "wf-d", {}, "fail", {"error": "ALREADY_EXISTS"})
    return s


def finish(s, workflow_id, status="COMPLETED", run_id=None, runs=1):
    return s.op(9, "final", workflow_id, None, "ok",
                {"status": status, "run_id": run_id, "runs": runs if status else 0})


def test_workflows_valid_history_passes_and_counts_recovered():
    s = workflows_history()
    finish(s, "wf-a", run_id="r-a")
    finish(s, "wf-b", run_id="r-b")
    finish(s, "wf-c", status=None)
    finish(s, "wf-d", status=None)
    result = workflows.check(s.ops)
    assert result["valid"] is True, result
    assert (result["ok_starts"], result["info_starts"], result["fail_starts"]) == (1, 2, 1)
    assert result["recovered"] == 1


def test_workflows_flags_a_lost_acknowledged_start():
    s = workflows_history()
    start = s.op(0, "start", "wf-lost", {}, "ok", {"run_id": "r-x"})
    finish(s, "wf-a", run_id="r-a")
    final = finish(s, "wf-lost", status=None)
    result = workflows.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["lost"]
    assert set(start) | set(final) <= set(only(result, "lost")["ops"])


def test_workflows_flags_a_start_that_made_two_runs():
    s = workflows_history()
    start = s.op(0, "start", "wf-2", {}, "ok", {"run_id": "r-1"})
    finish(s, "wf-a", run_id="r-a")
    finish(s, "wf-2", run_id="r-1", runs=2)
    result = workflows.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["multiple-runs"]
    assert set(start) <= set(only(result, "multiple-runs")["ops"])


@pytest.mark.parametrize("final, kind", [
    (dict(status="COMPLETED", run_id="r-other"), "run-changed"),
    (dict(status="RUNNING", run_id="r-a"), "wrong-status"),
    (dict(status="FAILED", run_id="r-a"), "wrong-status"),
])
def test_workflows_flags_wrong_end_states(final, kind):
    s = Script()
    start = s.op(0, "start", "wf-a", {}, "ok", {"run_id": "r-a"})
    finish(s, "wf-a", **final)
    result = workflows.check(s.ops)
    assert result["valid"] is False and kinds(result) == [kind]
    assert set(start) <= set(only(result, kind)["ops"])
    if final["status"] == "FAILED":
        assert workflows.check(s.ops, expected_statuses={"COMPLETED", "FAILED"})["valid"]


def test_workflows_flags_a_failed_start_that_exists_and_two_acks():
    s = Script()
    failed = s.op(0, "start", "wf-f", {}, "fail", {"error": "ABORTED"})
    finish(s, "wf-f", run_id="r-f")
    s.op(1, "start", "wf-d", {}, "ok", {"run_id": "r-1"})
    s.op(1, "start", "wf-d", {}, "ok", {"run_id": "r-2"})
    finish(s, "wf-d", run_id="r-2")
    result = workflows.check(s.ops)
    assert sorted(kinds(result)) == ["duplicate-start", "failed-start-exists"]
    assert set(failed) <= set(only(result, "failed-start-exists")["ops"])


def test_workflows_without_a_final_read_is_unknown_not_valid():
    s = Script()
    s.op(0, "start", "wf-a", {}, "ok", {"run_id": "r-a"})
    s.op(9, "final", "wf-a", None, "info", {"error": "unavailable"})
    assert workflows.check(s.ops)["valid"] == "unknown"


def test_workflows_reads_only_its_workload_when_told():
    s = Script("counter")
    s.op(0, "start", "c-0", {}, "ok", {"run_id": "r"})  # a counter: never finishes
    assert workflows.check(s.ops, workload="workflows")["valid"] is True
    assert workflows.check(s.ops)["valid"] == "unknown"


# --- tasks -----------------------------------------------------------------------------------

EXPECTED = {"s0": "a", "s1": "b"}


def tasks_history():
    s = Script("workflows")
    s.op(0, "start", "wf", {}, "ok", {"run_id": "r"})
    s.record("exec", "wf", {"workflow_id": "wf", "key": "s0", "attempt": 1})
    s.record("exec", "wf", {"workflow_id": "wf", "key": "s1", "attempt": 1})  # crashed
    s.record("exec", "wf", {"workflow_id": "wf", "key": "s1", "attempt": 2}, "worker:2")
    s.op(1, "result", "wf", None, "ok", {"results": dict(EXPECTED), "expected": EXPECTED})
    s.op(1, "result", "wf", None, "info", {"error": "timeout"})
    s.op(2, "result", "wf", None, "ok", {"results": dict(EXPECTED), "expected": EXPECTED})
    s.op(9, "completed", "wf", None, "ok", {"workflow_id": "wf", "key": "s0", "attempt": 1})
    s.op(9, "completed", "wf", None, "ok", {"workflow_id": "wf", "key": "s1", "attempt": 2})
    return s


def test_tasks_valid_history_passes():
    result = tasks.check(tasks_history().ops, task_keys=["s0", "s1"])
    assert result["valid"] is True, result
    assert result["tasks_retried"] == 1 and result["executions"] == 3
    assert tasks.check(tasks_history().ops, expected=lambda w, k: EXPECTED[k])["valid"] is True


def test_tasks_flags_a_changed_result():
    s = tasks_history()
    first = s.op(3, "result", "wf", None, "ok", {"results": dict(EXPECTED)})
    changed = s.op(3, "result", "wf", None, "ok", {"results": {"s0": "a", "s1": "B"}})
    result = tasks.check(s.ops)
    assert result["valid"] is False and set(kinds(result)) == {"changed"}
    assert set(changed) <= set(only(result, "changed")["ops"])
    assert not set(first) & set(only(result, "changed")["ops"])  # names the first sighting
    assert only(result, "changed")["was"] == "b"


def test_tasks_flags_a_result_other_than_expected():
    s = tasks_history()
    wrong = s.op(3, "result", "wf", None, "ok", {"s0": "a", "s1": "zz"})
    result = tasks.check(s.ops, expected=lambda w, k: EXPECTED[k])
    assert "wrong-result" in kinds(result)
    assert set(wrong) <= set(only(result, "wrong-result")["ops"])


def test_tasks_flags_a_lost_result_and_a_missing_one():
    s = tasks_history()
    lost = s.op(3, "result", "wf", None, "ok", {"results": {"s0": "a"}})
    orphan = s.op(4, "start", "wf-2", {}, "ok", {"run_id": "r2"})
    result = tasks.check(s.ops)
    assert sorted(kinds(result)) == ["result-lost", "result-missing"]
    assert set(lost) <= set(only(result, "result-lost")["ops"])
    assert only(result, "result-missing")["ops"] == sorted(orphan)


def test_tasks_flags_a_task_run_again_after_it_completed():
    s = tasks_history()
    again = s.record("exec", "wf", {"workflow_id": "wf", "key": "s0", "attempt": 2})
    result = tasks.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["ran-after-completion"]
    assert again in only(result, "ran-after-completion")["ops"]


def test_tasks_flags_two_executions_of_one_attempt_and_two_completions():
    s = tasks_history()
    dup = s.record("exec", "wf", {"workflow_id": "wf", "key": "s0", "attempt": 1}, "worker:3")
    twice = s.op(9, "completed", "wf", None, "ok",
                 {"workflow_id": "wf", "key": "s1", "attempt": 1})
    result = tasks.check(s.ops)
    assert sorted(kinds(result)) == ["completed-twice", "duplicate-attempt"]
    assert dup in only(result, "duplicate-attempt")["ops"]
    assert twice[1] in only(result, "completed-twice")["ops"]


# --- linearizable ----------------------------------------------------------------------------

def register_ops(*steps, key="k"):
    """steps: (process, f, argument, type, result) ops, run one after another."""
    s = Script("register")
    return s, [s.op(p, f, key, arg, t, res) for p, f, arg, t, res in steps]


def test_linearizable_valid_concurrent_history():
    s = Script("register")
    s.invoke(0, "write", "k", 1)
    s.invoke(1, "read", "k")
    s.complete(1, "ok", {"value": 1, "version": 1})  # saw the write before it returned
    s.complete(0, "ok", {"version": 1})
    s.op(2, "cas", "k", {"expect_version": 1, "new": 2}, "ok", {"version": 2})
    s.op(2, "cas", "k", {"expect_version": 1, "new": 3}, "fail", {"error": "ABORTED"})
    s.op(0, "read", "k", None, "ok", {"value": 2, "version": 2})
    result = linearizable.check(s.ops)
    assert result["valid"] is True, result
    assert result["keys"]["k"]["ops"] == 4  # the failed cas is dropped


def test_linearizable_flags_a_stale_read():
    s, (w1, w2, r) = register_ops(
        (0, "write", 1, "ok", {"version": 1}),
        (1, "write", 2, "ok", {"version": 2}),
        (2, "read", None, "ok", {"value": 1, "version": 1}))
    result = linearizable.check(s.ops)
    assert result["valid"] is False
    bad = only(result, "nonlinearizable")
    assert bad["op"]["index"] == r[0] and bad["ops"] == list(r)
    assert bad["prefix"] == [w1[0], w2[0]] and bad["state"] == {"value": 2, "version": 2}
    plain = [dict(op, value=op["value"]["value"]) if op["f"] == "read" and op["type"] == "ok"
             else op for op in s.ops]
    assert only(linearizable.check(plain, model="register"), "nonlinearizable")["op"][
        "index"] == r[0]


@pytest.mark.parametrize("seen, valid", [
    ({"value": 2, "version": 2}, True),    # the info write happened
    ({"value": 1, "version": 1}, True),    # ... or not (yet)
    ({"value": 3, "version": 2}, False),   # nobody wrote 3
])
def test_linearizable_info_write_may_or_may_not_have_happened(seen, valid):
    s, _ = register_ops(
        (0, "write", 1, "ok", {"version": 1}),
        (1, "write", 2, "info", {"error": "timeout"}),
        (2, "read", None, "ok", seen))
    assert linearizable.check(s.ops)["valid"] is valid
    plain = [dict(op, value=op["value"]["value"]) if op["f"] == "read" and op["type"] == "ok"
             else op for op in s.ops]
    assert linearizable.check(plain, model="register")["valid"] is valid


def test_linearizable_info_write_takes_effect_once_and_late():
    s = Script("register")
    s.op(0, "write", "k", 1, "ok", {"version": 1})
    s.invoke(1, "write", "k", 2)  # never completes: may take effect at any later time
    s.op(2, "read", "k", None, "ok", {"value": 1, "version": 1})
    s.op(2, "read", "k", None, "ok", {"value": 2, "version": 2})
    assert linearizable.check(s.ops)["valid"] is True
    s.op(2, "read", "k", None, "ok", {"value": 1, "version": 1})  # back: impossible
    assert linearizable.check(s.ops)["valid"] is False


def test_linearizable_cas_semantics():
    s, (_w, cas, r) = register_ops(
        (0, "write", 1, "ok", {"version": 1}),
        (1, "cas", {"expect_version": 1, "new": 5}, "fail", {"error": "ABORTED"}),
        (2, "read", None, "ok", {"value": 5, "version": 2}))
    result = linearizable.check(s.ops)  # a failed cas did not happen
    assert result["valid"] is False and only(result, "nonlinearizable")["op"]["index"] == r[0]
    s, (_w, cas) = register_ops(
        (0, "write", 1, "ok", {"version": 1}),
        (1, "cas", {"expect_version": 0, "new": 5}, "ok", {"version": 2}))
    result = linearizable.check(s.ops)  # applied against the wrong version
    assert result["valid"] is False and only(result, "nonlinearizable")["op"]["index"] == cas[0]


def test_linearizable_checks_keys_independently():
    s = Script("register")
    s.op(0, "write", "a", 1, "ok", {"version": 1})
    s.op(0, "read", "b", None, "ok", {"value": None, "version": 0})
    bad = s.op(1, "read", "a", None, "ok", {"value": None, "version": 0})
    result = linearizable.check(s.ops)
    assert result["valid"] is False and result["keys_checked"] == 2
    assert only(result, "nonlinearizable")["key"] == "a"
    assert only(result, "nonlinearizable")["ops"] == list(bad)


def simulate_register(n_ops, *, processes=5, info_rate=0.0, seed=0, versioned=True):
    """A history of a real atomic register under concurrent clients with random
    latencies: each op takes effect at a random instant within its call (an info op:
    any time after its invoke, or with probability 1/2 never)."""
    rng = random.Random(seed)
    free_at = [0.0] * processes
    plans = []
    for i in range(n_ops):
        p = rng.randrange(processes)
        invoke = free_at[p] + rng.uniform(0.1, 2.0)
        duration = rng.expovariate(1.0) + 0.05
        free_at[p] = invoke + duration
        roll, info = rng.random(), rng.random() < info_rate
        plans.append({"p": p, "value": i, "invoke": invoke, "complete": invoke + duration,
                      "info": info, "happens": not info or rng.random() < 0.5,
                      "effect": invoke + rng.uniform(0, duration * (3 if info else 1)),
                      "f": "read" if roll < 0.5 else
                           "write" if roll < 0.8 or not versioned else "cas"})
    _play(plans, rng, versioned)
    return _records(plans)


def _play(plans, rng, versioned):
    value, version = None, 0
    for plan in sorted(plans, key=lambda q: q["effect"]):
        plan["type"] = "info" if plan["info"] else "ok"
        if plan["f"] == "read":
            plan["result"] = {"value": value, "version": version} if versioned else value
        elif plan["f"] == "write":
            plan["arg"], plan["result"] = plan["value"], {"version": version + 1}
            if plan["happens"]:
                value, version = plan["value"], version + 1
        else:
            expect = version + rng.choice([-1, 0, 0, 1])
            plan["arg"] = {"expect_version": expect, "new": plan["value"]}
            plan["result"] = {"version": version + 1}
            if expect != version:
                plan["type"], plan["result"] = ("info" if plan["info"] else "fail"), None
            elif plan["happens"]:
                value, version = plan["value"], version + 1
        if plan["info"]:
            plan["result"] = {"error": "timeout"}


def _records(plans):
    timed = []
    for plan in plans:
        base = {"process": plan["p"], "f": plan["f"], "workload": "register", "key": "k"}
        timed.append((plan["invoke"], {**base, "type": "invoke", "value": plan.get("arg")}))
        timed.append((plan["complete"], {**base, "type": plan["type"],
                                         "value": plan["result"]}))
    timed.sort(key=lambda pair: pair[0])
    return [{"index": i, "time_ns": int(t * 1e6), **op} for i, (t, op) in enumerate(timed)]


def corrupt_a_read(ops, rng):
    """One ok read made to return a state that a write which completed before the read
    began had overwritten. -> (ops, the read's invoke index)."""
    pairs = hist.pair(ops)
    made = {op.result["version"]: (op.argument if op.f == "write" else op.argument["new"],
                                   op.complete_index)
            for op in pairs if op.type == "ok" and op.f in ("write", "cas")}
    reads = [op for op in pairs if op.type == "ok" and op.f == "read"]
    rng.shuffle(reads)
    for read in reads:
        for v in range(read.result["version"] - 1, 0, -1):
            if v in made and v + 1 in made and made[v + 1][1] < read.invoke_index:
                ops = [dict(op) for op in ops]
                ops[read.completion["index"]]["value"] = {"value": made[v][0], "version": v}
                return ops, read.invoke_index
    raise AssertionError("no read to corrupt")


@pytest.mark.parametrize("info_rate", [0.0, 0.05])
def test_linearizable_randomized_1000_ops_valid_then_one_read_corrupted(info_rate):
    ops = simulate_register(1000, info_rate=info_rate, seed=7)
    result = linearizable.check(ops)
    assert result["valid"] is True, result["anomalies"]
    assert result["keys"]["k"]["ops"] > 800  # less the failed cas and info reads
    bad_ops, read_at = corrupt_a_read(ops, random.Random(3))
    result = linearizable.check(bad_ops)
    assert result["valid"] is False
    assert only(result, "nonlinearizable")["op"]["index"] == read_at


def test_linearizable_randomized_plain_register():
    ops = simulate_register(1000, info_rate=0.05, seed=11, versioned=False)
    assert linearizable.check(ops, model="register")["valid"] is True


def test_linearizable_too_big_or_too_slow_is_unknown_never_valid():
    ops = simulate_register(2000, info_rate=0.05, seed=5)
    result = linearizable.check(ops, max_ops_per_key=500)
    assert result["valid"] == "unknown" and kinds(result) == ["too-many-ops"]
    result = linearizable.check(ops, time_budget_s=0)
    assert result["valid"] == "unknown" and kinds(result) == ["search-timed-out"]


# A brute-force oracle for small histories: try every subset of the unknown-outcome ops
# with every real-time-respecting order, on the model written out plainly.

def _oracle_step(state, op, versioned):
    kind, arg, result = op.f, op.argument, op.result
    if not versioned:
        return state if kind == "read" and result == state else (
            arg if kind == "write" else None)
    value, version = state
    if kind == "read":
        return state if (result["value"], result["version"]) == state else None
    if op.type == "ok" and result.get("version") is not None and result["version"] != version + 1:
        return None
    if kind == "write":
        return (arg, version + 1)
    return (arg["new"], version + 1) if arg["expect_version"] == version else None


def _orders_exist(chosen, state, versioned):
    if not chosen:
        return True
    for op in chosen:
        if any(other.complete_index < op.invoke_index for other in chosen if other is not op):
            continue  # something that must come first is still unplaced
        after = _oracle_step(state, op, versioned)
        if after is not None or (not versioned and op.f == "read" and op.result == state):
            rest = [o for o in chosen if o is not op]
            if _orders_exist(rest, after if op.f != "read" else state, versioned):
                return True
    return False


def oracle(ops, versioned):
    pairs = [op for op in hist.pair(ops) if op.type != "fail"
             and not (op.f == "read" and op.type != "ok")]
    must = [op for op in pairs if op.type == "ok"]
    maybe = [op for op in pairs if op.type != "ok"]
    init = (None, 0) if versioned else None
    return any(_orders_exist(must + list(subset), init, versioned)
               for r in range(len(maybe) + 1) for subset in itertools.combinations(maybe, r))


@st.composite
def small_histories(draw, versioned):
    s = Script("register")
    open_ops: dict = {}
    for _ in range(draw(st.integers(2, 14))):
        p = draw(st.integers(0, 2))
        if p in open_ops:
            f = open_ops.pop(p)
            t = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail"]))
            s.complete(p, t, _small_result(draw, f, t, versioned))
            continue
        f = draw(st.sampled_from(["read", "write", "cas"] if versioned else ["read", "write"]))
        arg = {"read": None, "write": draw(st.integers(1, 3)),
               "cas": {"expect_version": draw(st.integers(0, 3)),
                       "new": draw(st.integers(1, 3))}}[f]
        s.invoke(p, f, "k", arg)
        open_ops[p] = f
    return s.ops


def _small_result(draw, f, t, versioned):
    if t != "ok":
        return {"error": t}
    if f == "read":
        value = draw(st.sampled_from([None, 1, 2, 3]))
        return {"value": value, "version": draw(st.integers(0, 3))} if versioned else value
    return {"version": draw(st.integers(1, 4))} if versioned else None


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), versioned=st.booleans())
def test_linearizable_agrees_with_brute_force(data, versioned):
    ops = data.draw(small_histories(versioned))
    model = "cas-register" if versioned else "register"
    assert linearizable.check(ops, model=model)["valid"] is oracle(ops, versioned)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32), info_rate=st.sampled_from([0.0, 0.1, 0.3]),
       processes=st.integers(1, 8), versioned=st.booleans())
def test_linearizable_passes_simulated_registers(seed, info_rate, processes, versioned):
    ops = simulate_register(150, processes=processes, info_rate=info_rate, seed=seed,
                            versioned=versioned)
    model = "cas-register" if versioned else "register"
    assert linearizable.check(ops, model=model)["valid"] is True


# --- monotonic -------------------------------------------------------------------------------

def test_monotonic_valid_history_passes():
    s = Script("counter")
    s.op(0, "inc", "c")
    s.op(1, "read", "c", None, "ok", 1)
    s.invoke(0, "inc", "c")
    s.invoke(1, "read", "c")
    s.op(2, "read", "c", None, "ok", 2)
    s.complete(1, "ok", 1)  # concurrent with the read of 2: may still see 1
    s.complete(0, "info", {"error": "timeout"})
    s.op(1, "read", "c", None, "ok", {"value": 2})
    result = monotonic.check(s.ops)
    assert result["valid"] is True, result
    assert result["reads"] == 4


def test_monotonic_flags_a_read_that_went_back():
    s = Script("counter")
    s.op(0, "inc", "c")
    s.op(0, "inc", "c")
    high = s.op(1, "read", "c", None, "ok", 2)
    s.op(2, "read", "c", None, "ok", 2)
    low = s.op(1, "read", "c", None, "ok", 1)
    result = monotonic.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["went-backwards"]
    assert set(low) <= set(only(result, "went-backwards")["ops"])
    assert set(high) & set(only(result, "went-backwards")["ops"]) or \
        only(result, "went-backwards")["earlier"] == 2


def test_monotonic_flags_more_than_was_sent():
    s = Script("counter")
    s.op(0, "inc", "c")
    s.op(0, "inc", "c", None, "fail", {"error": "NOT_FOUND"})
    high = s.op(1, "read", "c", None, "ok", 2)
    result = monotonic.check(s.ops)
    assert kinds(result) == ["too-high"] and only(result, "too-high")["ops"] == list(high)


# --- queue -----------------------------------------------------------------------------------

def queue_history():
    s = Script("queue")
    s.op(0, "enqueue", "i1", {"item": "i1"}, "ok", {"run_id": "r1"})
    s.op(0, "enqueue", "i2", {"item": "i2"}, "info", {"error": "timeout"})
    s.op(1, "enqueue", "i3", {"item": "i3"}, "info", {"error": "timeout"})  # never happened
    s.op(1, "enqueue", "i4", {"item": "i4"}, "fail", {"error": "INVALID_ARGUMENT"})
    s.record("dequeue", "i1", {"item": "i1", "attempt": 1})
    s.record("dequeue", "i1", {"item": "i1", "attempt": 2})  # redelivered after a crash
    s.record("dequeue", "i2", {"item": "i2", "attempt": 1})
    return s


def test_queue_valid_history_passes():
    result = queue.check(queue_history().ops)
    assert result["valid"] is True, result
    assert (result["recovered"], result["duplicated"], result["duplicates_explained"]) == (1, 1, 1)
    assert result["lost"] == 0 and result["delivered"] == 2


def test_queue_flags_a_lost_enqueue():
    s = queue_history()
    lost = s.op(2, "enqueue", "i5", {"item": "i5"}, "ok", {"run_id": "r5"})
    result = queue.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["lost"]
    assert only(result, "lost")["ops"] == list(lost) and result["lost"] == 1


def test_queue_flags_an_unexplained_duplicate():
    s = queue_history()
    again = s.record("dequeue", "i2", {"item": "i2", "attempt": 1}, "worker:2")
    result = queue.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["unexplained-duplicate"]
    assert again in only(result, "unexplained-duplicate")["ops"]
    assert result["duplicates_unexplained"] == 1 and result["duplicates_explained"] == 1


def test_queue_flags_unexpected_items():
    s = queue_history()
    failed = s.record("dequeue", "i4", {"item": "i4", "attempt": 1})
    ghost = s.record("dequeue", "i9", {"item": "i9", "attempt": 1})
    result = queue.check(s.ops)
    assert kinds(result) == ["unexpected", "unexpected"] and result["unexpected"] == 2
    assert [a["ops"] for a in result["anomalies"]] == [[failed], [ghost]]


# --- timers ----------------------------------------------------------------------------------

def timers_history(delay_ms=1000):
    """t1 acked and fired once on time; t2 info, fired (recovered); t3 info, never."""
    s = Script("timers")
    s.op(0, "start-timer", "t1", {"timer": "t1", "delay_ms": delay_ms}, "ok", {"run_id": "r"})
    s.op(1, "start-timer", "t2", {"timer": "t2", "delay_ms": delay_ms}, "info", {"error": "x"})
    s.op(1, "start-timer", "t3", {"timer": "t3", "delay_ms": delay_ms}, "info", {"error": "x"})
    s.tick(delay_ms)
    s.record("fired", "t1", {"timer": "t1", "attempt": 1})
    s.record("fired", "t2", {"timer": "t2", "attempt": 1})
    return s


def final_timer(s, timer, fired, **leader):
    return s.op(9, "final-timer", timer, None, "ok", {"fired": fired, **leader})


def test_timers_valid_history_passes():
    s = timers_history()
    final_timer(s, "t1", 1, fire_at_ms=2000, started_ms=1000, fired_ms=[2003])
    final_timer(s, "t2", 1)
    result = timers.check(s.ops)
    assert result["valid"] is True, result
    assert (result["fired_once"], result["recovered"], result["acked"]) == (2, 1, 1)


def test_timers_flags_an_early_timer():
    s = timers_history()
    early = s.op(2, "start-timer", "t4", {"timer": "t4", "delay_ms": 5000}, "ok", {"run_id": "r"})
    s.tick(1000)
    fired = s.record("fired", "t4", {"timer": "t4", "attempt": 1})
    final_timer(s, "t4", 1)
    result = timers.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["early"]
    assert set(early) | {fired} <= set(only(result, "early")["ops"])
    assert only(result, "early")["clock"] == "real time"
    assert timers.check(s.ops, tolerance_ms=5000)["valid"] is True  # a clock-skew allowance


def test_timers_flags_early_on_the_leaders_clock():
    s = timers_history()
    final_timer(s, "t1", 1, fire_at_ms=2000, started_ms=1000, fired_ms=[1990])
    result = timers.check(s.ops)
    assert kinds(result) == ["early"] and only(result, "early")["clock"] == "leader"


def test_timers_flags_a_timer_fired_twice():
    s = timers_history()
    final = final_timer(s, "t1", 2)
    result = timers.check(s.ops)
    assert result["valid"] is False and kinds(result) == ["fired-twice"]
    assert set(final) <= set(only(result, "fired-twice")["ops"])
    s = timers_history()
    again = s.record("fired", "t1", {"timer": "t1", "attempt": 1}, "worker:2")
    final_timer(s, "t1", 1)
    assert again in only(timers.check(s.ops), "fired-twice")["ops"]


def test_timers_flags_an_acked_timer_that_never_fired():
    s = timers_history()
    start = s.op(2, "start-timer", "t5", {"timer": "t5", "delay_ms": 10}, "ok", {"run_id": "r"})
    final_timer(s, "t5", 0)
    result = timers.check(s.ops)
    assert kinds(result) == ["never-fired"]
    assert set(start) <= set(only(result, "never-fired")["ops"])



def test_timers_a_timer_due_after_the_final_read_is_pending_not_lost():
    """A leader whose clock ran fast set fire_at_ms far ahead: unfired at the end is fine
    while it is not due; unfired long past its time is never-fired."""
    s = timers_history()
    s.op(2, "start-timer", "t5", {"timer": "t5", "delay_ms": 10}, "ok", {"run_id": "r"})
    final_timer(s, "t5", 0, fire_at_ms=400_000, read_wall_ms=130_000)
    result = timers.check(s.ops)
    assert result["valid"] is True and result["not_due"] == 1
    s = timers_history()
    start = s.op(2, "start-timer", "t5", {"timer": "t5", "delay_ms": 10}, "ok", {"run_id": "r"})
    final_timer(s, "t5", 0, fire_at_ms=100_000, read_wall_ms=130_000)
    result = timers.check(s.ops)
    assert kinds(result) == ["never-fired"]
    assert set(start) <= set(only(result, "never-fired")["ops"])


# --- compose ---------------------------------------------------------------------------------

def test_compose_verdicts():
    assert compose({"a": {"valid": True}, "b": {"valid": True}})["valid"] is True
    assert compose({"a": {"valid": True}, "b": {"valid": "unknown"}})["valid"] == "unknown"
    out = compose({"a": {"valid": False}, "b": {"valid": "unknown"}, "c": {"valid": True}})
    assert out["valid"] is False and out["failed"] == ["a"] and out["unknown"] == ["b"]
    assert compose({})["valid"] == "unknown"


def test_anomaly_lists_are_bounded():
    s = Script("queue")
    for i in range(50):
        s.op(0, "enqueue", f"i{i}", {}, "ok", {})
    result = queue.check(s.ops, max_anomalies=5)
    assert result["lost"] == 50 and len(result["anomalies"]) == 5
    assert result["anomalies_truncated"] and result["anomaly_counts"] == {"lost": 50}
