"""Versioning (#9): coda.context.patched on new and old histories, and
coda.testing.replay catching a non-deterministic change."""

import json

import pytest

import coda
from coda.client.sdk import definition_of
from coda.client.workflow_runtime import NonDeterminismError, RunInfo, WorkflowRun
from coda.storage import codec


@coda.workflow(name="notify_v1")
async def notify_v1():
    return await coda.context.spawn_task("send_email", args={})


@coda.workflow(name="notify_v2")
async def notify_v2():
    if coda.context.patched("sms"):
        sent = await coda.context.spawn_task("send_sms", args={})
    else:
        sent = await coda.context.spawn_task("send_email", args={})
    assert coda.context.patched("sms") in (True, False)  # memoized, no second marker
    return sent


@coda.workflow(name="notify_v3")
async def notify_v3():
    coda.context.deprecate_patch("sms")
    return await coda.context.spawn_task("send_sms", args={})


INFO = RunInfo("n-1", "r1", 1_700_000_000_000)


def numbered(events):
    return [dict(e, event_id=n + 1, time_ms=1_700_000_000_000 + n) for n, e in enumerate(events)]


def recorded(commands, *, marker_at=1):
    """The history Flow commits for a first workflow task's commands."""
    events = [{"type": "WorkflowExecutionStarted", "input": codec.pack({})},
              {"type": "WorkflowTaskCompleted", "seen_event_id": marker_at}]
    for c in commands:
        if c["type"] == "ScheduleTask":
            events.append({"type": "TaskScheduled", "key": c["key"], "task": c["task"]})
        elif c["type"] == "RecordMarker":
            events.append({"type": "MarkerRecorded", "kind": "patch", "patch_id": c["patch_id"]})
    return numbered(events)


def first_commands(fn):
    return WorkflowRun(definition_of(fn), {}, INFO).advance(
        numbered([{"type": "WorkflowExecutionStarted", "input": codec.pack({})}]))


def test_a_new_execution_takes_the_new_branch_and_records_a_marker():
    commands = first_commands(notify_v2)
    assert [c["type"] for c in commands] == ["RecordMarker", "ScheduleTask"]
    assert commands[1]["task"] == "send_sms"
    # Its replay (new code) takes the same branch.
    again = WorkflowRun(definition_of(notify_v2), {}, INFO).advance(recorded(commands))
    assert again == []


def test_an_old_history_replays_the_old_branch_under_new_code():
    old = recorded(first_commands(notify_v1))
    assert WorkflowRun(definition_of(notify_v2), {}, INFO).advance(old) == []
    # And the old run completes on the new code without a marker.
    done = old + numbered([{"type": "TaskCompleted", "key": "#0", "result": "emailed"}])[-1:]
    done[-1] = dict(done[-1], event_id=len(old) + 1)
    [complete] = WorkflowRun(definition_of(notify_v2), {}, INFO).advance(done)
    assert complete == {"type": "CompleteWorkflow", "result": "emailed"}


def test_deprecate_patch_replays_histories_with_the_marker():
    new = recorded(first_commands(notify_v2))
    assert WorkflowRun(definition_of(notify_v3), {}, INFO).advance(new) == []


def test_replay_of_an_exported_history_catches_a_changed_workflow(tmp_path):
    from coda.client.cli import event_to_json
    old = recorded(first_commands(notify_v1))
    path = tmp_path / "h.json"
    path.write_text(json.dumps([event_to_json(e) for e in old]))  # as the CLI exports it
    assert coda.testing.replay(notify_v2, str(path)).commands == []       # patched: fine
    with pytest.raises(NonDeterminismError, match="send_sms.*send_email"):
        coda.testing.replay(notify_v3, str(path))                         # not patched
    result = coda.testing.replay(notify_v1, path.read_text())
    assert result.commands == [] and not result.finished


def test_replay_refuses_what_is_not_a_history():
    with pytest.raises(coda.errors.InvalidArgument, match="list of event maps"):
        coda.testing.replay(notify_v1, "[1, 2]")
    with pytest.raises(coda.errors.InvalidArgument, match="WorkflowExecutionStarted"):
        coda.testing.replay(notify_v1, [])
