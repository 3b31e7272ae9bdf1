"""The SDK's schedule arguments: checked before anything is sent, errors naming the field."""

from __future__ import annotations

import datetime

import pytest

from coda.client import schedules
from coda.errors import InvalidArgument
from coda.flow import sm_schedules
from coda.flow.schedule_service import schedule_info
from coda.storage import codec


class FakeClient:
    payload_bytes_max = 1024
    allow_undeclared_types = False


def parts(**kwargs):
    return schedules.schedule_parts(FakeClient(), "report", {"team": "ops"}, **kwargs)


def test_spec_action_and_policy_from_arguments():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    spec, action, policy = parts(interval=datetime.timedelta(minutes=5), offset=30,
                                 jitter=1.5, start_at=start, overlap="buffer_all",
                                 catchup_window=60, execution_timeout=10)
    assert (spec.interval_ms, spec.offset_ms, spec.jitter_ms) == (300_000, 30_000, 1500)
    assert spec.start_time_ms == 1767225600000 and spec.end_time_ms == 0
    assert codec.unpack(action.input) == {"team": "ops"} and action.workflow_type == "report"
    assert action.execution_timeout_ms == 10_000
    assert (policy.overlap, policy.catchup_window_ms) == ("BUFFER_ALL", 60_000)


@pytest.mark.parametrize("kwargs, field", [
    ({}, "spec"),
    ({"cron": "* * * * *", "interval": 5}, "spec"),
    ({"interval": 1e20}, "interval"),
    ({"interval": -1}, "interval"),
    ({"interval": float("nan")}, "interval"),
    ({"interval": 5, "jitter": "2s"}, "jitter"),
    ({"interval": 5, "start_at": datetime.datetime(2026, 1, 1)}, "start_at"),
    ({"interval": 5, "end_at": 1e15}, "end_at"),
    ({"interval": 5, "overlap": "SOMETIMES"}, "overlap"),
    ({"cron": 5}, "cron"),
    ({"cron": "@daily", "timezone": 2}, "timezone"),
])
def test_bad_arguments_name_their_field(kwargs, field):
    with pytest.raises(InvalidArgument) as caught:
        parts(**kwargs)
    assert caught.value.details["field"] == field, caught.value


def test_describe_dict_from_a_record():
    record = {"schedule_id": "s", "spec": {"cron": "", "interval_ms": 10_000, "offset_ms": 0,
                                           "timezone": "UTC", "jitter_ms": 0,
                                           "start_time_ms": 0, "end_time_ms": 0},
              "action": {"workflow_type": "w", "input": codec.pack({"a": 1}),
                         "execution_timeout_ms": 0},
              "policy": {"overlap": "SKIP", "catchup_window_ms": 5000, "pause_on_failure": False},
              "paused": False, "note": "", "next_nominal_ms": 20_000, "timer": None,
              "running": [{"workflow_id": sm_schedules.run_workflow_id("s", 10_000),
                           "nominal_ms": 10_000, "closing": None}],
              "buffered": [], "recent": [{"action": "started", "nominal_ms": 10_000,
                                          "at_ms": 10_004, "source": "schedule",
                                          "workflow_id": "s-1970-01-01T00:00:10Z"}],
              "counts": {"started": 1, "skipped": 0, "missed": 0},
              "created_ms": 1, "updated_ms": 2}
    info = schedules.schedule_to_dict(schedule_info(record, 3))
    assert info["next_action_times_ms"] == [20_000, 30_000, 40_000, 50_000, 60_000]
    assert info["running"] == [{"workflow_id": "s-1970-01-01T00:00:10Z",
                                "nominal_time_ms": 10_000, "closing": None}]
    assert info["action"]["args"] == {"a": 1} and info["shard"] == 3
    assert info["spec"]["cron"] is None and info["spec"]["interval_ms"] == 10_000
    assert info["recent"][0]["status"] is None and info["recent"][0]["source"] == "schedule"


def test_sync_handle_does_not_recurse_before_init():
    handle = schedules.SyncScheduleHandle.__new__(schedules.SyncScheduleHandle)
    with pytest.raises(AttributeError):
        handle.describe
