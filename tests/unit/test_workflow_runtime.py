"""The deterministic workflow runtime: replay, cache keys, fan-out, retries by replay,
non-determinism detection, deterministic now/random/uuid4."""

import asyncio

import pytest

import coda
from coda.client.sdk import definition_of
from coda.client.workflow_runtime import NonDeterminismError, RunInfo, WorkflowRun
from coda.errors import InvalidArgument
from coda.flow import limits
from coda.storage import codec

INFO = RunInfo(workflow_id="ev-1", run_id="r1", start_time_ms=1_700_000_000_000)


@coda.task(name="normalize", retry=coda.RetryPolicy(maximum_attempts=5), start_to_close_timeout=30)
async def normalize_event(project_id, event_data):
    return {"normalized": event_data}


@coda.task(name="store")
def store_event(data):
    return "stored"


@coda.workflow(name="process_event")
async def process_event(project_id, event_data):
    data = await coda.context.spawn_task(normalize_event, args={"project_id": project_id,
                                                                "event_data": event_data},
                                         cache_key=[event_data["event_id"]])
    stored = await coda.context.spawn_task(store_event, args={"data": data})
    return {"data": data, "stored": stored}


def run_of(fn, args, info=INFO):
    return WorkflowRun(definition_of(fn), args, info)


def complete(command, result, time_ms=None):
    events = [{"type": "TaskScheduled", "key": command["key"], "task": command["task"]},
              {"type": "TaskCompleted", "key": command["key"], "result": result}]
    if time_ms is not None:
        for e in events:
            e["time_ms"] = time_ms
    return events


ARGS = {"project_id": "p1", "event_data": {"event_id": "e-1"}}


def test_tasks_are_scheduled_one_at_a_time_and_the_result_completes_the_workflow():
    run = run_of(process_event, ARGS)
    [first] = run.advance([])
    assert first["type"] == "ScheduleTask" and first["task"] == "normalize"
    assert first["key"].startswith("c:") and len(first["key"]) <= limits.task_key_bytes_max and first["options"]["retry"]["maximum_attempts"] == 5
    assert codec.unpack(first["args"]) == ARGS
    assert first["idempotency_key"] == f"ev-1/{first['key']}"
    assert run.advance([]) == []  # still waiting: nothing new
    [second] = run.advance(complete(first, {"normalized": ARGS["event_data"]}))
    assert (second["task"], second["key"]) == ("store", "#1")
    [done] = run.advance(complete(second, "stored"))
    assert done == {"type": "CompleteWorkflow",
                    "result": {"data": {"normalized": {"event_id": "e-1"}}, "stored": "stored"}}


def test_replay_of_a_full_history_schedules_nothing_again():
    history = []
    run = run_of(process_event, ARGS)
    for command in run.advance([]):
        history += complete(command, {"normalized": 1})
    for command in run.advance(history[-2:]):
        history += complete(command, "stored")
    replay = run_of(process_event, ARGS)
    assert replay.advance(history) == [{"type": "CompleteWorkflow",
                                        "result": {"data": {"normalized": 1}, "stored": "stored"}}]


@coda.workflow(name="weekly")
async def weekly_email(fail_once: bool):
    orgs = await coda.context.spawn_task("get_all_orgs", cache_key=["orgs"])
    sent = await coda.context.await_all(
        [coda.context.spawn_task("send_weekly_email", args={"org": o}, cache_key=[o]) for o in orgs])
    if fail_once and coda.context.random() < 2:  # always true: the seed's random 1/0
        1 / 0
    return sent


def test_a_retried_attempt_replays_completed_tasks_instead_of_running_them():
    attempt1 = run_of(weekly_email, {"fail_once": True})
    history = []
    [get_orgs] = attempt1.advance([])
    history += complete(get_orgs, ["a", "b", "c"])
    fan_out = attempt1.advance(history)
    assert [c["task"] for c in fan_out] == ["send_weekly_email"] * 3
    # Scheduled in spawn order (the order the commands were committed); completed in any.
    new_events = [{"type": "TaskScheduled", "key": c["key"], "task": c["task"]} for c in fan_out]
    new_events += [{"type": "TaskCompleted", "key": c["key"],
                    "result": f"sent-{codec.unpack(c['args'])['org']}"} for c in reversed(fan_out)]
    history += new_events
    [failed] = attempt1.advance(new_events)
    assert failed["type"] == "FailWorkflow" and failed["error"]["type"] == "ZeroDivisionError"
    # Attempt 2 (fixed input): every task resolves from history; nothing is scheduled.
    attempt2 = run_of(weekly_email, {"fail_once": False},
                      RunInfo("ev-1", "r1", INFO.start_time_ms, attempt=2))
    assert attempt2.advance(history) == [{"type": "CompleteWorkflow",
                                          "result": ["sent-a", "sent-b", "sent-c"]}]


@coda.workflow(name="careful")
async def careful():
    try:
        await coda.context.spawn_task("risky")
    except coda.TaskFailedError as exc:
        return f"compensated after {exc.error_type}"
    return "fine"


def test_a_failed_task_raises_in_the_workflow_which_may_handle_it():
    run = run_of(careful, {})
    [cmd] = run.advance([])
    events = [{"type": "TaskScheduled", "key": cmd["key"], "task": "risky"},
              {"type": "TaskFailed", "key": cmd["key"], "error": {"type": "Boom", "message": "no"}}]
    assert run.advance(events) == [{"type": "CompleteWorkflow", "result": "compensated after Boom"}]


@coda.workflow(name="changed")
async def changed_workflow():
    try:
        await coda.context.spawn_task("new_step")
    except Exception:  # must not hide non-determinism
        pass
    return "done"


def test_replay_against_a_different_history_names_both_sides():
    history = [{"type": "TaskScheduled", "key": "#0", "task": "old_step"}]
    with pytest.raises(NonDeterminismError) as info:
        run_of(changed_workflow, {}).advance(history)
    message = info.value.message
    assert "'new_step'" in message and "'old_step'" in message
    assert message.endswith("Check that your workflow is deterministic.")


@coda.workflow(name="shorter")
async def shorter():
    return "nothing to do"


def test_a_history_with_more_tasks_than_the_code_spawns_is_non_deterministic():
    history = [{"type": "TaskScheduled", "key": "#0", "task": "removed"},
               {"type": "TaskCompleted", "key": "#0", "result": 1}]
    with pytest.raises(NonDeterminismError, match="'removed'"):
        run_of(shorter, {}).advance(history)


@coda.workflow(name="sleepy")
async def sleepy():
    await asyncio.sleep(1)


def test_awaiting_anything_but_coda_operations_fails_the_workflow_clearly():
    [failed] = run_of(sleepy, {}).advance([])
    assert failed["type"] == "FailWorkflow" and "coda.context" in failed["error"]["message"]


@coda.workflow(name="clocky")
async def clocky():
    before = coda.context.now()
    values = (coda.context.random(), str(coda.context.uuid4()))
    await coda.context.spawn_task("tick")
    return [before.isoformat(), coda.context.now().isoformat(), *values]


def test_now_random_and_uuid4_are_the_same_on_replay_and_differ_per_run():
    def result(info):
        run = run_of(clocky, {}, info)
        [cmd] = run.advance([])
        return run.advance(complete(cmd, None, time_ms=info.start_time_ms + 5000))[0]["result"]

    first, again = result(INFO), result(INFO)
    assert first == again
    assert first[0] == "2023-11-14T22:13:20+00:00" and first[1] == "2023-11-14T22:13:25+00:00"
    other = result(RunInfo("ev-1", "r2", INFO.start_time_ms))
    assert other[2:] != first[2:]


def test_retry_policy_defaults_schedule_and_validation():
    policy = coda.RetryPolicy()
    assert (policy.initial_interval, policy.backoff_coefficient, policy.maximum_interval_s,
            policy.maximum_attempts, policy.non_retryable_errors) == (1.0, 2.0, 100.0, 0, ())
    assert [policy.delay_s(a) for a in (1, 2, 3, 8, 20)] == [1, 2, 4, 100, 100]
    limited = coda.RetryPolicy(maximum_attempts=3, non_retryable_errors=["ValueError"])
    assert limited.retries_after(2, "KeyError") and not limited.retries_after(3, "KeyError")
    assert not limited.retries_after(1, "ValueError")
    for bad in ({"initial_interval": 0}, {"backoff_coefficient": 0.5},
                {"maximum_attempts": -1}, {"maximum_interval": 0.1, "initial_interval": 1},
                {"non_retryable_errors": [3]}):
        with pytest.raises(InvalidArgument) as info:
            coda.RetryPolicy(**bad)
        assert info.value.details["field"] in bad


def test_declarations_and_context_misuse_give_clear_errors():
    with pytest.raises(InvalidArgument, match="async"):
        coda.workflow(name="sync")(lambda: None)
    with pytest.raises(InvalidArgument, match="start_to_close_timeout"):
        coda.task(start_to_close_timeout=-1)(lambda: None)
    with pytest.raises(InvalidArgument, match="inside a running workflow"):
        coda.context.spawn_task("x")


@coda.workflow(name="guarded")
async def guarded():
    try:
        return await coda.context.spawn_task("slow")
    except asyncio.CancelledError:
        return await coda.context.spawn_task("cleanup")


def test_replay_reveals_a_cancel_in_the_step_it_came_in_not_after_later_results():
    """Original run: the cancel arrived while `slow` ran, so the workflow cleaned up; the
    slow task's result came later. A replay that showed everything at once would take the
    result path and diverge; the markers keep the original order."""
    history = [
        {"event_id": 1, "type": "WorkflowExecutionStarted", "time_ms": 1},
        {"event_id": 2, "type": "WorkflowTaskCompleted", "seen_event_id": 1, "time_ms": 2},
        {"event_id": 3, "type": "TaskScheduled", "key": "#0", "task": "slow", "time_ms": 2},
        {"event_id": 4, "type": "WorkflowCancelRequested", "reason": "user", "time_ms": 3},
        {"event_id": 5, "type": "WorkflowTaskCompleted", "seen_event_id": 4, "time_ms": 4},
        {"event_id": 6, "type": "TaskScheduled", "key": "#1", "task": "cleanup", "time_ms": 4},
        {"event_id": 7, "type": "TaskCompleted", "key": "#0", "result": "slow done", "time_ms": 5},
        {"event_id": 8, "type": "TaskCompleted", "key": "#1", "result": "cleaned", "time_ms": 6},
    ]
    run = WorkflowRun(definition_of(guarded), {}, INFO)
    assert run.advance(history) == [{"type": "CompleteWorkflow", "result": "cleaned"}]


def test_a_changed_workflow_is_caught_on_replay_even_across_steps():
    history = [
        {"event_id": 1, "type": "WorkflowExecutionStarted", "time_ms": 1},
        {"event_id": 2, "type": "WorkflowTaskCompleted", "seen_event_id": 1, "time_ms": 2},
        {"event_id": 3, "type": "TaskScheduled", "key": "#0", "task": "fast", "time_ms": 2},
    ]
    run = WorkflowRun(definition_of(guarded), {}, INFO)
    with pytest.raises(NonDeterminismError, match="'slow'.*'fast'"):
        run.advance(history)
