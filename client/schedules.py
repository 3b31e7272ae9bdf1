"""Schedules in the SDK: `Client.create_schedule(...)` answers a `ScheduleHandle`
(describe, update, pause, unpause, trigger, backfill, delete); `list_schedules()`.

    handle = await client.create_schedule(
        "nightly-report", report, args={"team": "ops"},
        cron="0 2 * * *", timezone="Europe/Paris", overlap="BUFFER_ONE")
    await handle.trigger()

Times are seconds (float) or timedelta for durations, and timezone-aware datetimes or
Unix seconds for instants. Each run's workflow id is "<schedule id>-<nominal time, UTC
ISO>", so no two runs for the same time ever exist. Flow validates the spec (cron, time
zone, overlap policy) and answers InvalidArgument naming the field.
"""

from __future__ import annotations

import datetime
import math
import uuid
from dataclasses import dataclass

from coda.api import flow_pb2 as pb
from coda.errors import InvalidArgument
from coda.storage import codec

DURATION_S_MAX = 100 * 365 * 24 * 3600    # Flow bounds each field further, by name
INSTANT_S_MAX = 253402300799               # 9999-12-31T23:59:59Z
OVERLAP_POLICIES = ("SKIP", "BUFFER_ONE", "BUFFER_ALL", "CANCEL_OTHER", "TERMINATE_OTHER",
                    "ALLOW_ALL")


def duration_ms(value, field: str, *, allow_zero: bool = True) -> int:
    """Seconds (int/float) or a timedelta -> milliseconds; None -> 0."""
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not 0 <= value <= DURATION_S_MAX
            or (value == 0 and not allow_zero)):
        raise InvalidArgument(f"{field} must be a number of seconds from 0 to "
                              f"{DURATION_S_MAX} or a timedelta, got {value!r}", field=field)
    return int(round(value * 1000))


def instant_ms(value, field: str) -> int:
    """An aware datetime or Unix seconds -> Unix milliseconds; None -> 0 (no bound)."""
    if value is None:
        return 0
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise InvalidArgument(f"{field} must be timezone-aware (a naive datetime is "
                                  "ambiguous)", field=field)
        return int(round(value.timestamp() * 1000))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and 0 <= value <= INSTANT_S_MAX:
        return int(round(value * 1000))
    raise InvalidArgument(f"{field} must be an aware datetime or Unix seconds up to year "
                          f"9999, got {value!r}", field=field)


def overlap_name(value, field: str = "overlap") -> str:
    if not isinstance(value, str) or value.upper() not in OVERLAP_POLICIES:
        raise InvalidArgument(f"unknown overlap policy {value!r}; one of "
                              f"{', '.join(OVERLAP_POLICIES)}", field=field)
    return value.upper()


def schedule_parts(client, workflow, args, *, cron=None, interval=None, offset=None,
                   timezone=None, jitter=None, start_at=None, end_at=None, overlap="SKIP",
                   catchup_window=None, pause_on_failure=False, execution_timeout=None):
    """(ScheduleSpec, ScheduleAction, SchedulePolicy) messages from SDK arguments."""
    from coda.client.client import execution_timeout_ms, workflow_args, workflow_type_of
    if (cron is None) == (interval is None):
        raise InvalidArgument("give exactly one of cron= (e.g. '0 2 * * *') and interval= "
                              "(seconds or a timedelta)", field="spec")
    if cron is not None and not isinstance(cron, str):
        raise InvalidArgument(f"cron must be a string, got {type(cron).__name__}", field="cron")
    if timezone is not None and not isinstance(timezone, str):
        raise InvalidArgument("timezone must be an IANA name such as 'Europe/Paris'",
                              field="timezone")
    spec = pb.ScheduleSpec(
        cron=cron or "", interval_ms=duration_ms(interval, "interval"),
        offset_ms=duration_ms(offset, "offset"), timezone=timezone or "",
        jitter_ms=duration_ms(jitter, "jitter"), start_time_ms=instant_ms(start_at, "start_at"),
        end_time_ms=instant_ms(end_at, "end_at"))
    type_name, default_timeout_s = workflow_type_of(workflow)
    action = pb.ScheduleAction(
        workflow_type=type_name,
        input=codec.encode_payload(workflow_args(args), what="workflow args",
                                   limit_bytes=client.payload_bytes_max),
        execution_timeout_ms=execution_timeout_ms(
            execution_timeout if execution_timeout is not None else default_timeout_s))
    policy = pb.SchedulePolicy(overlap=overlap_name(overlap),
                               catchup_window_ms=duration_ms(catchup_window, "catchup_window"),
                               pause_on_failure=bool(pause_on_failure))
    return spec, action, policy


def schedule_to_dict(info: pb.ScheduleInfo) -> dict:
    return {
        "schedule_id": info.schedule_id, "shard": info.shard,
        "spec": {"cron": info.spec.cron or None, "interval_ms": info.spec.interval_ms or None,
                 "offset_ms": info.spec.offset_ms, "timezone": info.spec.timezone or "UTC",
                 "jitter_ms": info.spec.jitter_ms,
                 "start_time_ms": info.spec.start_time_ms or None,
                 "end_time_ms": info.spec.end_time_ms or None},
        "action": {"workflow_type": info.action.workflow_type,
                   "args": codec.decode_payload(info.action.input, what="schedule args")
                   if info.action.input else None,
                   "execution_timeout_ms": info.action.execution_timeout_ms or None},
        "policy": {"overlap": info.policy.overlap,
                   "catchup_window_ms": info.policy.catchup_window_ms,
                   "pause_on_failure": info.policy.pause_on_failure},
        "paused": info.paused, "note": info.note,
        "next_action_times_ms": list(info.next_action_times_ms),
        "running": [{"workflow_id": r.workflow_id, "nominal_time_ms": r.nominal_time_ms,
                     "closing": r.closing or None} for r in info.running],
        "buffered_times_ms": list(info.buffered_times_ms),
        "recent": [{"action": a.action, "nominal_time_ms": a.nominal_time_ms,
                    "at_ms": a.at_ms, "source": a.source or None,
                    "workflow_id": a.workflow_id or None, "status": a.status or None,
                    "detail": a.detail or None} for a in info.recent],
        "counts": {"started": info.started, "skipped": info.skipped, "missed": info.missed},
        "created_ms": info.created_ms, "updated_ms": info.updated_ms,
    }


@dataclass
class ScheduleHandle:
    client: object
    schedule_id: str

    async def describe(self) -> dict:
        answer = await self.client._call("DescribeSchedule", pb.DescribeScheduleRequest(
            schedule_id=self.schedule_id), retry_indeterminate=True, workflow_id=self.schedule_id)
        return schedule_to_dict(answer.schedule)

    async def _patch(self, op: str, **fields) -> None:
        await self.client._call("PatchSchedule", pb.PatchScheduleRequest(
            schedule_id=self.schedule_id, op=op, request_id=uuid.uuid4().hex, **fields),
            retry_indeterminate=True, workflow_id=self.schedule_id)

    async def pause(self, note: str = "") -> None:
        await self._patch("pause", note=_note(note))

    async def unpause(self, note: str = "") -> None:
        """Times that passed while paused are not caught up."""
        await self._patch("unpause", note=_note(note))

    async def trigger(self, overlap: str | None = None) -> None:
        """Act now (nominal time: now), under `overlap` (default: the schedule's policy)."""
        await self._patch("trigger", overlap=overlap_name(overlap) if overlap else "")

    async def backfill(self, start_at, end_at, overlap: str | None = None) -> None:
        """Act on every nominal time in [start_at, end_at] now (no catch-up window)."""
        await self._patch("backfill", start_time_ms=instant_ms(start_at, "start_at"),
                          end_time_ms=instant_ms(end_at, "end_at"),
                          overlap=overlap_name(overlap) if overlap else "")

    async def update(self, workflow, args=None, *, allow_undeclared_type=None, **spec) -> None:
        """Replace the spec, action and policy (same arguments as create_schedule)."""
        parts = schedule_parts(self.client, workflow, args, **spec)
        await self.client._call("UpdateSchedule", pb.UpdateScheduleRequest(
            schedule_id=self.schedule_id, spec=parts[0], action=parts[1], policy=parts[2],
            request_id=uuid.uuid4().hex,
            allow_undeclared_type=_allow(self.client, allow_undeclared_type)),
            retry_indeterminate=True, workflow_id=self.schedule_id)

    async def delete(self) -> None:
        """The schedule goes; runs it started run on."""
        await self.client._call("DeleteSchedule", pb.DeleteScheduleRequest(
            schedule_id=self.schedule_id, request_id=uuid.uuid4().hex),
            retry_indeterminate=True, workflow_id=self.schedule_id)


def _note(note) -> str:
    if not isinstance(note, str):
        raise InvalidArgument(f"note must be a string, got {type(note).__name__}", field="note")
    return note


def _allow(client, allow_undeclared_type) -> bool:
    return client.allow_undeclared_types if allow_undeclared_type is None \
        else bool(allow_undeclared_type)


class ScheduleMethods:
    """Client's schedule methods (mixed into coda.Client)."""

    async def create_schedule(self, schedule_id: str, workflow, args=None, *,
                              paused: bool = False, note: str = "",
                              allow_undeclared_type: bool | None = None,
                              request_id: str | None = None, **spec) -> ScheduleHandle:
        """Create schedule `schedule_id` starting `workflow` (a type name or a
        @coda.workflow function) with keyword arguments `args`. Spec and policy:
        cron= | interval=, offset=, timezone=, jitter=, start_at=, end_at=, overlap=
        (SKIP), catchup_window= (a year), pause_on_failure=, execution_timeout=."""
        if not isinstance(schedule_id, str):
            raise InvalidArgument("schedule_id must be a string", field="schedule_id")
        parts = schedule_parts(self, workflow, args, **spec)
        await self._call("CreateSchedule", pb.CreateScheduleRequest(
            schedule_id=schedule_id, spec=parts[0], action=parts[1], policy=parts[2],
            paused=bool(paused), note=_note(note), request_id=request_id or uuid.uuid4().hex,
            allow_undeclared_type=_allow(self, allow_undeclared_type)),
            retry_indeterminate=True, workflow_id=schedule_id)
        return ScheduleHandle(self, schedule_id)

    def get_schedule_handle(self, schedule_id: str) -> ScheduleHandle:
        return ScheduleHandle(self, schedule_id)

    async def list_schedules(self, *, page_size: int = 0,
                             page_token: bytes = b"") -> tuple[list[dict], bytes]:
        answer = await self._call("ListSchedules", pb.ListSchedulesRequest(
            page_size=page_size, page_token=page_token), retry_indeterminate=True)
        return [schedule_to_dict(s) for s in answer.schedules], bytes(answer.next_page_token)

    async def all_schedules(self) -> list[dict]:
        out, token = [], b""
        while True:
            items, token = await self.list_schedules(page_token=token)
            out += items
            if not token:
                return out


class SyncScheduleHandle:
    """ScheduleHandle's methods, blocking (on the SyncClient's loop)."""

    def __init__(self, client, handle: ScheduleHandle):
        self.client = client
        self._handle = handle
        self.schedule_id = handle.schedule_id

    def __getattr__(self, name):
        handle = self.__dict__.get("_handle")  # not self._handle: no recursion before init
        if handle is None or name.startswith("_"):
            raise AttributeError(name)
        method = getattr(handle, name)
        if not callable(method):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.client._run(method(*args, **kwargs))


class SyncScheduleMethods:
    """SyncClient's schedule methods."""

    def create_schedule(self, *args, **kwargs) -> SyncScheduleHandle:
        return SyncScheduleHandle(self, self._run(self._client.create_schedule(*args, **kwargs)))

    def get_schedule_handle(self, schedule_id: str) -> SyncScheduleHandle:
        return SyncScheduleHandle(self, self._client.get_schedule_handle(schedule_id))

    def list_schedules(self, **kwargs):
        return self._run(self._client.list_schedules(**kwargs))

    def all_schedules(self) -> list[dict]:
        return self._run(self._client.all_schedules())
