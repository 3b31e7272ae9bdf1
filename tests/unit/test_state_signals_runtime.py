"""Workflow state, signals and recorded reads in the deterministic runtime (#5): what is
emitted, what a replay returns, and that a changed workflow is caught."""

import pytest

import coda
from coda.client.sdk import definition_of
from coda.client.workflow_runtime import NonDeterminismError, RunInfo, WorkflowRun
from coda.storage import codec

INFO = RunInfo(workflow_id="wf-1", run_id="r1", start_time_ms=1_700_000_000_000)


def run_of(fn, args=None, resolver=None):
    run = WorkflowRun(definition_of(fn), args or {}, INFO)
    run.resolver = resolver
    return run


def numbered(events, start=1):
    """Events with ids and a marker after each, as Flow would commit them."""
    out = []
    for event in events:
        out.append(dict(event, event_id=start + len(out), time_ms=1_700_000_000_000 + len(out)))
    return out


# --- state ---------------------------------------------------------------------------------

@coda.workflow(name="progress")
async def progress():
    coda.context.set_state("stage", "fetching")
    coda.context.set_state("count", 1)
    coda.context.set_state("stage", "done")
    own = await coda.context.get_state("stage")
    missing = await coda.context.get_state("nope", default="dflt")
    return [own, missing]


def test_set_state_emits_each_change_and_replay_emits_none():
    run = run_of(progress)
    commands = run.advance([])
    sets = [c for c in commands if c["type"] == "SetState"]
    assert [(c["key"], codec.unpack(c["value"])) for c in sets] == [
        ("stage", "fetching"), ("count", 1), ("stage", "done")]
    assert commands[-1] == {"type": "CompleteWorkflow", "result": ["done", "dflt"]}
    history = numbered([{"type": "StateSet", "key": c["key"], "value": c["value"]}
                        for c in sets])
    replay = run_of(progress)
    assert [c["type"] for c in replay.advance(history)] == ["CompleteWorkflow"]


def test_a_replay_that_sets_another_key_is_non_deterministic():
    history = numbered([{"type": "StateSet", "key": "phase", "value": codec.pack("x")}])
    with pytest.raises(NonDeterminismError, match="set_state #0 sets 'stage'.*'phase'"):
        run_of(progress).advance(history)


@coda.workflow(name="reads_missing")
async def reads_missing():
    return await coda.context.get_state("never")


def test_own_missing_state_raises_not_found_in_the_workflow():
    [command] = run_of(reads_missing).advance([])
    assert command["type"] == "FailWorkflow" and command["error"]["type"] == "NotFound"
    assert "no state key 'never'" in command["error"]["message"]


@coda.workflow(name="too_big")
async def too_big():
    coda.context.set_state("blob", b"x" * (3 * 1024 * 1024))


def test_an_oversized_state_value_is_refused_at_the_call():
    [command] = run_of(too_big).advance([])
    assert command["type"] == "FailWorkflow" and command["error"]["type"] == "PayloadError"
    assert command.get("final") is True


# --- reads of other workflows' state and of broadcasts -------------------------------------

@coda.workflow(name="reader")
async def reader():
    a = await coda.context.get_broadcast("cfg")
    b = await coda.context.get_broadcast("cfg")
    other = await coda.context.get_state("stage", workflow_id="wf-2", default=None)
    return [a, b, other]


def answers(version, value):
    return {"found": True, "version": version, "value": codec.pack(value)}


def test_reads_are_recorded_and_a_replay_returns_what_the_run_saw():
    seen = []

    def resolver(kind, params, min_version):
        seen.append((kind, params, min_version))
        return answers(3, {"rate": 1}) if kind == "broadcast" else None

    run = run_of(reader, resolver=resolver)
    commands = run.advance([])
    # Two broadcast reads served at once; the state read waits for the worker.
    assert [c["type"] for c in commands] == ["RecordRead", "RecordRead"]
    first, second = commands
    assert first["version"] == 3 and codec.unpack(first["value"]) == {"rate": 1}
    assert second["version"] == 3 and "value" not in second  # same version: not repeated
    assert seen[1] == ("broadcast", {"name": "cfg"}, 3)      # never older than seen
    [pending] = run.pending_reads
    assert pending.kind == "state" and pending.params == {"workflow_id": "wf-2", "key": "stage"}
    run.complete_reads([{"found": True, "value": codec.pack("fetching")}])
    more = run.advance([])
    assert more[0]["type"] == "RecordRead" and more[0]["kind"] == "state"
    assert more[-1] == {"type": "CompleteWorkflow",
                        "result": [{"rate": 1}, {"rate": 1}, "fetching"]}

    history = numbered([dict(c, type="BroadcastRead" if c["kind"] == "broadcast" else "StateRead")
                        for c in commands + more[:1]])
    replay = run_of(reader, resolver=lambda *a: answers(9, "newer"))
    assert replay.advance(history) == more[-1:]  # the recorded values, not the newer ones


def test_a_replay_reading_another_name_is_non_deterministic():
    history = numbered([{"type": "BroadcastRead", "kind": "broadcast", "seq": 0,
                         "name": "other", "version": 1, "found": True,
                         "value": codec.pack(1)}])
    with pytest.raises(NonDeterminismError, match="read #0"):
        run_of(reader).advance(history)


@coda.workflow(name="reads_unset")
async def reads_unset():
    return await coda.context.get_broadcast("unset")


def test_an_unset_broadcast_raises_not_found_and_replays_the_same():
    run = run_of(reads_unset, resolver=lambda *a: {"found": False, "version": 0})
    record, fail = run.advance([])
    assert record["found"] is False and fail["error"]["type"] == "NotFound"
    replay = run_of(reads_unset, resolver=lambda *a: answers(1, "set since"))
    [again] = replay.advance(numbered([dict(record, type="BroadcastRead")]))
    assert again["error"] == fail["error"]


# --- signals -------------------------------------------------------------------------------

@coda.workflow(name="collect")
async def collect(n):
    got = []
    for _ in range(n):
        got.append(await coda.context.wait_signal("item"))
    try:
        await coda.context.wait_signal("late", timeout=5)
        got.append("late came")
    except TimeoutError:
        got.append("timed out")
    return got


def signal(name, payload):
    return {"type": "SignalReceived", "name": name, "payload": codec.pack(payload)}


def test_signals_sent_before_the_wait_are_buffered_and_taken_in_order():
    run = run_of(collect, {"n": 3})
    assert run.advance([]) == []  # waits for the first item
    history = numbered([signal("item", 1), signal("other", "x"), signal("item", 2),
                        signal("item", 3)])
    [timer] = run.advance(history)
    assert timer["type"] == "StartTimer" and timer["delay_ms"] == 5000
    fired = numbered([{"type": "TimerStarted", "key": timer["key"], "fire_at_ms": 0},
                      {"type": "TimerFired", "key": timer["key"]}], start=5)
    [done] = run.advance(fired)
    assert done == {"type": "CompleteWorkflow", "result": [1, 2, 3, "timed out"]}
    # A replay of the same history takes the same signals the same way.
    assert run_of(collect, {"n": 3}).advance(history + fired) == [done]


def test_a_signal_in_the_same_step_as_the_timeout_wins():
    run = run_of(collect, {"n": 0})
    [timer] = run.advance([])
    both = numbered([{"type": "TimerStarted", "key": timer["key"], "fire_at_ms": 0},
                     {"type": "TimerFired", "key": timer["key"]}, signal("late", 1)])
    assert run.advance(both) == [{"type": "CompleteWorkflow", "result": ["late came"]}]


@coda.workflow(name="notify")
async def notify():
    await coda.context.signal_workflow("wf-2", "go", {"n": 1})
    return "sent"


def test_signal_workflow_is_a_spawn_that_resolves_when_delivered_or_raises():
    run = run_of(notify)
    [command] = run.advance([])
    assert command["type"] == "SignalExternal" and command["workflow_id"] == "wf-2"
    assert codec.unpack(command["payload"]) == {"n": 1}
    scheduled = {"type": "SignalExternalScheduled", "key": command["key"],
                 "workflow_id": "wf-2", "name": "go"}
    sent = run_of(notify).advance(numbered([scheduled, {"type": "SignalExternalSent",
                                                        "key": command["key"]}]))
    assert sent == [{"type": "CompleteWorkflow", "result": "sent"}]
    failed = run_of(notify).advance(numbered([scheduled, {
        "type": "SignalExternalFailed", "key": command["key"],
        "error": {"type": "NOT_FOUND", "message": "workflow 'wf-2' not found"}}]))
    assert failed[0]["type"] == "FailWorkflow" and failed[0]["error"]["type"] == "NotFound"


def test_context_calls_check_their_arguments():
    with pytest.raises(coda.errors.InvalidArgument, match="only usable inside"):
        coda.context.set_state("k", 1)
    with pytest.raises(coda.errors.InvalidArgument, match="signal name"):
        coda.context.wait_signal("")
    with pytest.raises(coda.errors.InvalidArgument, match="broadcast name .* over the limit"):
        coda.context.get_broadcast("b" * 201)


@coda.workflow(name="many_reads")
async def many_reads():
    try:
        for n in range(2_000):
            coda.context.get_state("k", workflow_id=f"other-{n}")  # none answered yet
    except coda.errors.LimitExceeded as exc:
        return str(exc)


def test_reads_waiting_in_one_step_are_bounded():
    [command] = run_of(many_reads).advance([])
    assert "reads waiting in one step, the limit is 1000" in command["result"]


# --- coda.testing.run_locally ----------------------------------------------------------------

@coda.workflow(name="local_mix")
async def local_mix():
    coda.context.set_state("stage", "reading")
    rate = await coda.context.get_broadcast("rate")
    peer = await coda.context.get_state("stage", workflow_id="other", default="?")
    first = await coda.context.wait_signal("go")
    await coda.context.signal_workflow("billing", "done", {"rate": rate})
    coda.context.set_state("stage", "done")
    return [rate, peer, first]


def test_run_locally_serves_state_broadcasts_and_signals():
    import asyncio
    local = asyncio.run(coda.testing.run_locally(
        local_mix, signals=[("go", "now")], broadcasts={"rate": 1.5},
        workflow_states={("other", "stage"): "busy"}))
    assert local.result == [1.5, "busy", "now"]
    assert local.state == {"stage": "done"}
    assert local.signals_sent == [("billing", "done", {"rate": 1.5})]
