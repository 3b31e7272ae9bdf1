"""A schedule's spec -> its nominal times. Deterministic: no clock is read here.

The state machine calls `next_after(spec, ms)` with times stamped by the leader, so every
replica computes the same times. That is why this module, alone in the pure core, may
import `datetime` and `zoneinfo` (tests/unit/test_purity.py allows it and checks that it
never asks for the current time), and why time zone rules come from the pinned `tzdata`
package rather than the operating system: two nodes with different OS zone files would
otherwise disagree about a local time.

A spec is either a cron expression (5 fields, or a macro such as @hourly) read in a time
zone, or a fixed interval aligned to the Unix epoch plus an offset (Temporal's rule, so
"every 10 s" fires at :00, :10, ...). Start and end times bound it; jitter delays each
action by a stable pseudo-random amount below `jitter_ms` (a hash of the schedule id and
the nominal time, so a replay or a failover picks the same delay).
"""

from __future__ import annotations

import datetime
import hashlib
import zoneinfo

from croniter import CroniterError, croniter

from coda.errors import InvalidArgument

# Only the pinned tzdata package: the same rules on every node (see the docstring).
zoneinfo.reset_tzpath(to=())

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
INTERVAL_MS_MIN = 1000
INTERVAL_MS_MAX = 10 * 365 * 24 * 3600 * 1000
JITTER_MS_MAX = 24 * 3600 * 1000
CRON_BYTES_MAX = 255
TIME_MS_MAX = 253402300799000  # 9999-12-31T23:59:59Z: datetime's range


def validate(spec) -> dict:
    """A complete spec from a possibly partial map; InvalidArgument names what is wrong."""
    if not isinstance(spec, dict):
        raise InvalidArgument("a schedule spec must be a map", field="spec")
    cron = spec.get("cron") or ""
    interval_ms = _int(spec, "interval_ms", 0, INTERVAL_MS_MAX)
    offset_ms = _int(spec, "offset_ms", 0, INTERVAL_MS_MAX)
    jitter_ms = _int(spec, "jitter_ms", 0, JITTER_MS_MAX)
    start_ms = _int(spec, "start_time_ms", 0, TIME_MS_MAX)
    end_ms = _int(spec, "end_time_ms", 0, TIME_MS_MAX)
    timezone = spec.get("timezone") or "UTC"
    if not isinstance(cron, str) or not isinstance(timezone, str):
        raise InvalidArgument("cron and timezone must be strings", field="spec")
    if bool(cron) == bool(interval_ms):
        raise InvalidArgument("a schedule spec needs exactly one of a cron expression or an "
                              "interval", field="spec")
    if interval_ms:
        if interval_ms < INTERVAL_MS_MIN:
            raise InvalidArgument(f"interval_ms must be at least {INTERVAL_MS_MIN} (1 s), got "
                                  f"{interval_ms}", field="interval_ms")
        if offset_ms >= interval_ms:
            raise InvalidArgument(f"offset_ms ({offset_ms}) must be below interval_ms "
                                  f"({interval_ms})", field="offset_ms")
    elif offset_ms:
        raise InvalidArgument("offset_ms applies to intervals only", field="offset_ms")
    if end_ms and end_ms < start_ms:
        raise InvalidArgument(f"end_time_ms ({end_ms}) is before start_time_ms ({start_ms})",
                              field="end_time_ms")
    out = {"cron": cron, "interval_ms": interval_ms, "offset_ms": offset_ms,
           "timezone": timezone, "jitter_ms": jitter_ms, "start_time_ms": start_ms,
           "end_time_ms": end_ms}
    zone(timezone)
    if cron:
        _check_cron(cron, timezone)
    return out


def _int(spec: dict, name: str, low: int, high: int) -> int:
    value = spec.get(name) or 0
    if type(value) is not int or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer in {low}..{high}, got {value!r}",
                              field=name)
    return value


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone `name`, or InvalidArgument saying it is not one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(f"unknown time zone {name!r}: use an IANA name such as "
                              "'UTC', 'Europe/Paris' or 'America/New_York'",
                              field="timezone") from None


def _check_cron(cron: str, timezone: str) -> None:
    if len(cron.encode()) > CRON_BYTES_MAX:
        raise InvalidArgument(f"a cron expression is at most {CRON_BYTES_MAX} bytes",
                              field="cron")
    fields = cron.split()
    if cron.startswith("@"):
        if cron.strip().lower() not in MACROS:
            raise InvalidArgument(f"unknown cron macro {cron!r}; one of {', '.join(MACROS)}",
                                  field="cron")
    elif len(fields) != 5:
        raise InvalidArgument(
            f"cron expression {cron!r} has {len(fields)} fields; Coda takes the standard 5 "
            "(minute hour day-of-month month day-of-week) or a macro such as @hourly "
            "(for seconds, use an interval)", field="cron")
    try:
        _next_cron(cron, timezone, 0)
    except CroniterError as exc:
        raise InvalidArgument(f"bad cron expression {cron!r}: {exc}", field="cron") from None


def _next_cron(cron: str, timezone: str, after_ms: int) -> int | None:
    start = datetime.datetime.fromtimestamp(after_ms / 1000, zone(timezone))
    try:
        found = croniter(cron.strip(), start).get_next(datetime.datetime)
    except CroniterError:
        raise  # a bad expression (validate reports it); a ValueError too, so first
    except (OverflowError, ValueError):
        return None  # past datetime's year 9999
    if not isinstance(found, datetime.datetime):
        return None
    return int(round(found.timestamp() * 1000))


def next_after(spec: dict, after_ms: int) -> int | None:
    """The first nominal time strictly after `after_ms` (None: the spec has ended)."""
    after_ms = max(after_ms, spec["start_time_ms"] - 1)
    if spec["interval_ms"]:
        interval, offset = spec["interval_ms"], spec["offset_ms"]
        found = ((after_ms - offset) // interval + 1) * interval + offset
    else:
        try:
            found = _next_cron(spec["cron"], spec["timezone"], after_ms)
        except CroniterError:
            # Validated at create, so only "no match for decades" can get here: the spec
            # has ended. Never an exception in apply (it would fail the whole timer batch).
            found = None
    if found is None or found > TIME_MS_MAX:
        return None
    if spec["end_time_ms"] and found > spec["end_time_ms"]:
        return None
    return found


def jitter_ms(spec: dict, schedule_id: str, nominal_ms: int) -> int:
    """A stable delay in [0, jitter_ms) for one nominal time."""
    if not spec["jitter_ms"]:
        return 0
    digest = hashlib.blake2b(f"{schedule_id}\x00{nominal_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % spec["jitter_ms"]


def iso(ms: int) -> str:
    """A time as UTC ISO-8601 (milliseconds shown only when not zero): run workflow ids."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"
