"""`coda`: the client CLI. Every command takes --address (or CODA_ADDRESS) and --json.

Errors print `error: CODE: message` on stderr and exit 1 (2 for usage errors). Payloads
(results, and the bytes fields of history events: input, result, args, ...) are shown
decoded from msgpack; bytes that are not valid msgpack, and bytes inside a decoded
payload, are shown as {"base64": "..."}.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import sys

import click

from coda.client.client import SyncClient, parse_addresses, workflow_result
from coda.client.schedules import OVERLAP_POLICIES
from coda.errors import CodaError
from coda.flow import model
from coda.storage import codec


class Ctx:
    def __init__(self, address: str | None, as_json: bool, timeout_s: float):
        self.address = address
        self.as_json = as_json
        self.timeout_s = timeout_s

    def client(self) -> SyncClient:
        if not self.address:
            raise click.UsageError("no Flow address: pass --address HOST:PORT[,...] or set "
                                   "CODA_ADDRESS (coda-flow dev prints it)")
        try:
            return SyncClient(self.address, timeout_s=self.timeout_s)
        except CodaError as exc:  # a malformed address: a usage error, not a traceback
            raise click.BadParameter(exc.message, param_hint="--address / CODA_ADDRESS") from None


def _emit(ctx: Ctx, data, human) -> None:
    if ctx.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)


def _run(fn):
    try:
        return fn()
    except CodaError as exc:
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C during a long wait: no traceback
        click.echo("interrupted", err=True)
        sys.exit(130)


def json_flag(command):
    """`--json` after the command too (`coda workflow history ID --json`)."""
    return click.option("--json", "local_json", is_flag=True,
                        help="Machine-readable output (same as coda --json).")(command)


def _use_json(ctx: Ctx, local_json: bool) -> None:
    ctx.as_json = ctx.as_json or local_json


def plain(value):
    """A decoded payload as JSON-ready values: bytes become {"base64": ...}."""
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a msgpack ExtType


def event_to_json(value):
    """A history event (or part of one) as JSON-ready values. Its bytes are msgpack
    payloads: shown decoded, or as {"base64": ...} when they are not valid msgpack."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return plain(codec.unpack(bytes(value)))
        except Exception:  # not msgpack (msgpack raises several unrelated types)
            return plain(value)
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): event_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [event_to_json(v) for v in value]
    return plain(value)


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _time(ms) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S")


@click.group()
@click.option("--address", envvar="CODA_ADDRESS", help="Flow node(s): host:port[,host:port...]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.5), default=30.0,
              show_default=True, help="Seconds to keep retrying before giving up.")
@click.pass_context
def main(click_ctx, address, as_json, timeout_s) -> None:
    """Coda client."""
    click_ctx.obj = Ctx(address, as_json, timeout_s)


@main.group()
def workflow() -> None:
    """Start, wait for, inspect, cancel and list workflows."""


@workflow.command("start")
@click.argument("workflow_type")
@click.option("--id", "workflow_id", help="Workflow id (default: TYPE-<uuid>).")
@click.option("--args", "args_json", default="{}", show_default=True,
              help="Workflow arguments as a JSON object.")
@click.option("--reuse-policy", type=click.Choice(model.REUSE_POLICIES),
              default=model.ALLOW_DUPLICATE, show_default=True)
@click.option("--request-id", help="Idempotency key; repeat it to retry safely.")
@click.option("--execution-timeout", "execution_timeout_s",
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds; past them the run closes TIMED_OUT (default: none).")
@click.option("--wait", is_flag=True, help="Wait for the run to close and print its result "
              "(exit 1 with its failure if it does not complete).")
@click.option("--allow-undeclared-type", is_flag=True, envvar="CODA_ALLOW_UNDECLARED_TYPES",
              help="Queue it even if no supervisor has declared the type yet (default: "
                   "refused, so a typo fails here).")
@json_flag
@click.pass_obj
def workflow_start(ctx: Ctx, workflow_type, workflow_id, args_json, reuse_policy, request_id,
                   execution_timeout_s, wait, allow_undeclared_type, local_json):
    """Start a workflow; a supervisor that runs its type picks it up."""
    _use_json(ctx, local_json)
    args = _args_object(args_json)
    with ctx.client() as client:
        handle = _run(lambda: client.start_workflow(
            workflow_type, args, workflow_id=workflow_id, reuse_policy=reuse_policy,
            request_id=request_id, execution_timeout=execution_timeout_s,
            allow_undeclared_type=allow_undeclared_type))
        data = {"workflow_id": handle.workflow_id, "run_id": handle.run_id,
                "started": handle.started}
        if not wait:
            _emit(ctx, data, _echo_started)
            return
        if not ctx.as_json:
            _echo_started(data)  # now: the run id is worth knowing during a long wait
        data["result"] = plain(_run(lambda: workflow_result(handle.wait_closed())))
    _emit(ctx, data, lambda d: click.echo(_compact(d["result"])))


def _args_object(args_json: str) -> dict:
    """--args: a JSON object of the workflow's keyword arguments, or a usage error."""
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from None
    if not isinstance(args, dict):
        raise click.BadParameter("must be a JSON object of the workflow's keyword arguments, "
                                 f"got {type(args).__name__}", param_hint="--args")
    return args


def _echo_started(data: dict) -> None:
    click.echo(f"started {data['workflow_id']} run {data['run_id']}" + (
        "" if data["started"] else " (an earlier call with this request id started it)"))


def _close_command(name: str, doc: str, method: str, done: str):
    """`coda workflow cancel|terminate ID`: the same flags, one client call."""
    @workflow.command(name, help=doc)
    @click.argument("workflow_id")
    @click.option("--run-id", default=None, help="Default: the current run.")
    @click.option("--reason", default="", help="Recorded in the run's history.")
    @json_flag
    @click.pass_obj
    def command(ctx: Ctx, workflow_id, run_id, reason, local_json):
        _use_json(ctx, local_json)
        with ctx.client() as client:
            closed = _run(lambda: getattr(client, method)(workflow_id, run_id, reason=reason))
        _emit(ctx, {"workflow_id": workflow_id, "run_id": closed}, lambda d: click.echo(
            done.format(**d)))
    return command


workflow_cancel = _close_command(
    "cancel", "Ask a run to cancel: it sees CancelledError at its current await and may "
    "clean up.", "cancel_workflow", "cancel requested for {workflow_id} run {run_id}")
workflow_terminate = _close_command(
    "terminate", "Close a run TERMINATED at once; no workflow code runs.",
    "terminate_workflow", "terminated {workflow_id} run {run_id}")


@workflow.command("result")
@click.argument("workflow_id")
@click.option("--run-id", default=None, help="Default: the current run.")
@click.option("--timeout", "wait_timeout_s", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for the run to close (default: no limit).")
@json_flag
@click.pass_obj
def workflow_result_command(ctx: Ctx, workflow_id, run_id, wait_timeout_s, local_json):
    """Wait for a run to close and print its result as JSON. Exit 1 with the failure if
    it closed otherwise (FAILED, CANCELLED, TERMINATED, TIMED_OUT, ...) or the wait
    timed out."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        handle = client.get_workflow_handle(workflow_id, run_id or "")
        info = _run(lambda: handle.wait_closed(wait_timeout_s))
        value = plain(_run(lambda: workflow_result(info)))
    data = {"workflow_id": info["workflow_id"], "run_id": info["run_id"],
            "status": info["status"], "result": value}
    _emit(ctx, data, lambda d: click.echo(_compact(d["result"])))


# --- schedules -----------------------------------------------------------------------------

class IsoTime(click.ParamType):
    """An ISO-8601 instant with a UTC offset (a trailing Z too) -> an aware datetime."""
    name = "ISO8601"

    def convert(self, value, param, click_ctx):
        if isinstance(value, datetime.datetime):
            return value
        text = value.strip()
        if text[-1:] in ("z", "Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time such as 2024-05-01T02:00:00Z",
                      param, click_ctx)
        if moment.tzinfo is None:
            # Refused rather than guessed: local to the machine running this, or UTC?
            self.fail(f"{value!r} has no UTC offset: add one such as Z or +02:00",
                      param, click_ctx)
        return moment


SECONDS = click.FloatRange(min=0)
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)


class OverlapChoice(click.Choice):
    """An overlap policy in any case. (Choice(case_sensitive=False) would list the
    policies in lower case in --help and in its errors.)"""

    def convert(self, value, param, click_ctx):
        return super().convert(value.upper() if isinstance(value, str) else value, param,
                               click_ctx)


OVERLAP = OverlapChoice(OVERLAP_POLICIES)

_DEFINITION_OPTIONS = (
    click.option("--workflow", "workflow_type", required=True, metavar="TYPE",
                 help="The workflow type each action starts."),
    click.option("--args", "args_json", default="{}", show_default=True,
                 help="The workflow's arguments as a JSON object."),
    click.option("--cron", metavar="EXPR", help='When to act: 5 fields (minute hour '
                 'day-of-month month day-of-week) or a macro such as @hourly, read in '
                 '--timezone; e.g. "0 2 * * *". Exactly one of --cron and --interval.'),
    click.option("--interval", "interval_s", type=POSITIVE_SECONDS, metavar="SECONDS",
                 help="When to act: every SECONDS, aligned to the Unix epoch (plus --offset)."),
    click.option("--offset", "offset_s", type=SECONDS, metavar="SECONDS",
                 help="Added to each --interval time; below the interval."),
    click.option("--timezone", metavar="TZ",
                 help="IANA zone --cron is read in, e.g. Europe/Paris (default: UTC)."),
    click.option("--jitter", "jitter_s", type=SECONDS, metavar="SECONDS",
                 help="Delay each action by a stable pseudo-random amount below SECONDS."),
    click.option("--start-at", type=IsoTime(), help="No action before this time "
                 "(ISO-8601 with an offset, e.g. 2024-05-01T02:00:00Z)."),
    click.option("--end-at", type=IsoTime(), help="No action after this time."),
    click.option("--overlap", type=OVERLAP, default="SKIP", show_default=True,
                 help="What an action does while an earlier run still runs."),
    click.option("--catchup-window", "catchup_window_s", type=POSITIVE_SECONDS,
                 metavar="SECONDS", help="Times missed (Flow down) by more than this are "
                 "recorded as missed, not run (default: a year)."),
    click.option("--pause-on-failure", is_flag=True,
                 help="Pause the schedule when one of its runs fails or times out."),
    click.option("--execution-timeout", "execution_timeout_s", type=POSITIVE_SECONDS,
                 metavar="SECONDS", help="Each run's; past it the run closes TIMED_OUT "
                 "(default: none)."),
    click.option("--allow-undeclared-type", is_flag=True, envvar="CODA_ALLOW_UNDECLARED_TYPES",
                 help="Accept the type even if no supervisor has declared it yet (default: "
                      "refused, so a typo fails here)."),
)


def _definition_options(command):
    """The spec, action and policy options of `schedule create` and `schedule update`."""
    for option in reversed(_DEFINITION_OPTIONS):
        command = option(command)
    return command


def _definition(options: dict) -> tuple[str, dict, dict]:
    """The definition options -> (workflow type, args, the SDK's keyword arguments)."""
    if bool(options["cron"]) == (options["interval_s"] is not None):
        raise click.UsageError("give exactly one of --cron EXPR and --interval SECONDS")
    return options["workflow_type"], _args_object(options["args_json"]), dict(
        cron=options["cron"] or None, interval=options["interval_s"],
        offset=options["offset_s"], timezone=options["timezone"], jitter=options["jitter_s"],
        start_at=options["start_at"], end_at=options["end_at"], overlap=options["overlap"],
        catchup_window=options["catchup_window_s"],
        pause_on_failure=options["pause_on_failure"],
        execution_timeout=options["execution_timeout_s"],
        allow_undeclared_type=options["allow_undeclared_type"])


def _iso(ms) -> str:
    """UTC ISO-8601, milliseconds only when not zero: the form of schedule run ids."""
    if not ms:
        return "-"
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + \
        datetime.timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}" if ms % 1000 else "") + "Z"


def _secs(ms) -> str:
    if not ms:
        return "-"
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000}s"


def _spec_summary(spec: dict) -> str:
    if spec["cron"]:
        return f'cron "{spec["cron"]}" {spec["timezone"]}'
    offset = f" offset {_secs(spec['offset_ms'])}" if spec["offset_ms"] else ""
    return f"every {_secs(spec['interval_ms'])}{offset}"


def _done(ctx: Ctx, schedule_id: str, text: str) -> None:
    """A mutating command's confirmation."""
    _emit(ctx, {"schedule_id": schedule_id, "ok": True}, lambda d: click.echo(text))


@main.group()
def schedule() -> None:
    """Schedules: start a workflow on a cron expression or every fixed interval. Each
    run's workflow id is "<schedule id>-<nominal time, UTC ISO>"."""


@schedule.command("create")
@click.argument("schedule_id")
@_definition_options
@click.option("--paused", is_flag=True, help="Create it paused (unpause to start acting).")
@click.option("--note", default="", help="Why (shown by describe; pause/unpause replace it).")
@click.option("--request-id", help="Idempotency key; repeat it to retry safely.")
@json_flag
@click.pass_obj
def schedule_create(ctx: Ctx, schedule_id, paused, note, request_id, local_json, **options):
    """Create SCHEDULE_ID; it starts --workflow on --cron or every --interval."""
    _use_json(ctx, local_json)
    workflow_type, args, kwargs = _definition(options)
    with ctx.client() as client:
        _run(lambda: client.create_schedule(schedule_id, workflow_type, args, paused=paused,
                                            note=note, request_id=request_id, **kwargs))
    _done(ctx, schedule_id, f"created schedule {schedule_id}" + (" (paused)" if paused else ""))


@schedule.command("update")
@click.argument("schedule_id")
@_definition_options
@json_flag
@click.pass_obj
def schedule_update(ctx: Ctx, schedule_id, local_json, **options):
    """Replace SCHEDULE_ID's whole definition (spec, action and policy), as Temporal's
    update does: an option left out takes its default, not the schedule's current value.
    Its state stays (paused and note, running and buffered runs, recent actions); the next
    time is planned afresh from now."""
    _use_json(ctx, local_json)
    workflow_type, args, kwargs = _definition(options)
    with ctx.client() as client:
        handle = client.get_schedule_handle(schedule_id)
        _run(lambda: handle.update(workflow_type, args, **kwargs))
    _done(ctx, schedule_id, f"updated schedule {schedule_id}")


@schedule.command("describe")
@click.argument("schedule_id")
@json_flag
@click.pass_obj
def schedule_describe(ctx: Ctx, schedule_id, local_json):
    """A schedule's definition, state, next action times (UTC) and recent actions."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        info = _run(lambda: client.get_schedule_handle(schedule_id).describe())
    _emit(ctx, plain(info), _echo_schedule)


def _echo_schedule(s: dict) -> None:
    spec, action, policy, counts = s["spec"], s["action"], s["policy"], s["counts"]
    rows = [
        ("schedule_id", s["schedule_id"]), ("workflow_type", action["workflow_type"]),
        ("args", _compact(action["args"] if action["args"] is not None else {})),
        ("spec", _spec_summary(spec)), ("timezone", spec["timezone"]),
        ("jitter", _secs(spec["jitter_ms"])), ("start_at", _iso(spec["start_time_ms"])),
        ("end_at", _iso(spec["end_time_ms"])), ("overlap", policy["overlap"]),
        ("catchup_window", _secs(policy["catchup_window_ms"])),
        ("pause_on_failure", "yes" if policy["pause_on_failure"] else "no"),
        ("execution_timeout", _secs(action["execution_timeout_ms"])),
        ("paused", "yes" if s["paused"] else "no"), ("note", s["note"] or "-"),
        ("counts", f"started {counts['started']}, skipped {counts['skipped']}, "
                   f"missed {counts['missed']}"),
        ("created", _iso(s["created_ms"])), ("updated", _iso(s["updated_ms"])),
        ("shard", s["shard"]),
    ]
    for key, value in rows:
        click.echo(f"{key:17s} {value}")
    _echo_rows("next", [_iso(t) for t in s["next_action_times_ms"]])
    _echo_rows("running", [f"{r['workflow_id']}  nominal {_iso(r['nominal_time_ms'])}"
                           + (f"  closing ({r['closing']})" if r["closing"] else "")
                           for r in s["running"]])
    _echo_rows("buffered", [_iso(t) for t in s["buffered_times_ms"]])
    _echo_rows("recent", [_recent_row(a) for a in s["recent"]])


def _echo_rows(key: str, rows: list[str]) -> None:
    """`key  first row`, the others under it; `key  -` when there are none."""
    for i, row in enumerate(rows or ["-"]):
        click.echo(f"{key if i == 0 else '':17s} {row}")


def _recent_row(a: dict) -> str:
    row = (f"{a['action']:8s} {_iso(a['nominal_time_ms'])}  {a['workflow_id'] or '-'}  "
           f"{a['status'] or '-'}  ({a['source'] or '-'})")
    return row + (f"  {a['detail']}" if a["detail"] else "")


@schedule.command("list")
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--page-token", default="", help="Continue from a previous page.")
@click.option("--all", "fetch_all", is_flag=True, help="Follow page tokens to the end.")
@json_flag
@click.pass_obj
def schedule_list(ctx: Ctx, page_size, page_token, fetch_all, local_json):
    """Schedules across all shards, ordered by id."""
    _use_json(ctx, local_json)
    items: list[dict] = []
    token = page_token.encode()
    with ctx.client() as client:
        while True:
            page, token = _run(lambda: client.list_schedules(page_size=page_size,
                                                             page_token=token))
            items += page
            if not (fetch_all and token):
                break
    data = {"schedules": plain(items), "next_page_token": token.decode() or None}

    def human(d):
        for s in d["schedules"]:
            upcoming = s["next_action_times_ms"]
            click.echo(f"{s['schedule_id']:30s} {s['action']['workflow_type']:20s} "
                       f"{_spec_summary(s['spec']):30s} "
                       f"{'paused' if s['paused'] else 'active':6s} "
                       f"next {_iso(upcoming[0]) if upcoming else '-'}")
        if d["next_page_token"]:
            click.echo(f"next page: --page-token {d['next_page_token']}")

    _emit(ctx, data, human)


def _note_command(name: str, doc: str, done: str):
    """`coda schedule pause|unpause ID [--note]`: the same flags, one handle call."""
    @schedule.command(name, help=doc)
    @click.argument("schedule_id")
    @click.option("--note", default="", help="Why; shown by describe.")
    @json_flag
    @click.pass_obj
    def command(ctx: Ctx, schedule_id, note, local_json):
        _use_json(ctx, local_json)
        with ctx.client() as client:
            _run(lambda: getattr(client.get_schedule_handle(schedule_id), name)(note))
        _done(ctx, schedule_id, done.format(schedule_id=schedule_id))
    return command


schedule_pause = _note_command(
    "pause", "Stop acting until unpaused (running runs go on).", "paused {schedule_id}")
schedule_unpause = _note_command(
    "unpause", "Act again from now on; times that passed while paused are not caught up.",
    "unpaused {schedule_id}")


@schedule.command("trigger")
@click.argument("schedule_id")
@click.option("--overlap", type=OVERLAP, default=None,
              help="Overlap policy for this action (default: the schedule's).")
@json_flag
@click.pass_obj
def schedule_trigger(ctx: Ctx, schedule_id, overlap, local_json):
    """Act now (nominal time: now), paused or not."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        _run(lambda: client.get_schedule_handle(schedule_id).trigger(overlap=overlap))
    _done(ctx, schedule_id, f"triggered {schedule_id} (describe shows what it did)")


@schedule.command("backfill")
@click.argument("schedule_id")
@click.option("--start", "start_at", type=IsoTime(), required=True,
              help="First time of the range (ISO-8601 with an offset, e.g. 2024-05-01T00:00Z).")
@click.option("--end", "end_at", type=IsoTime(), required=True,
              help="Last time of the range (included).")
@click.option("--overlap", type=OVERLAP, default=None,
              help="Overlap policy for these actions (default: the schedule's).")
@json_flag
@click.pass_obj
def schedule_backfill(ctx: Ctx, schedule_id, start_at, end_at, overlap, local_json):
    """Act now on every nominal time of the schedule in [--start, --end] (the catch-up
    window does not apply). With the default SKIP, only the first starts while it runs:
    pass --overlap ALLOW_ALL (or BUFFER_ALL) to run them all."""
    _use_json(ctx, local_json)
    if end_at < start_at:
        raise click.BadParameter(f"{_iso(int(end_at.timestamp() * 1000))} is before --start",
                                 param_hint="--end")
    with ctx.client() as client:
        _run(lambda: client.get_schedule_handle(schedule_id).backfill(start_at, end_at,
                                                                      overlap=overlap))
    _done(ctx, schedule_id, f"backfilled {schedule_id} (describe shows what it did)")


@schedule.command("delete")
@click.argument("schedule_id")
@json_flag
@click.pass_obj
def schedule_delete(ctx: Ctx, schedule_id, local_json):
    """Delete a schedule; runs it started run on."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        _run(lambda: client.get_schedule_handle(schedule_id).delete())
    _done(ctx, schedule_id, f"deleted schedule {schedule_id}")


@main.group()
def supervisor() -> None:
    """Supervisors: run workers for a module's workflows and tasks."""


@supervisor.command("run")
@click.argument("module")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: the number of CPUs).")
@click.option("--slots", type=click.IntRange(min=1), default=None,
              help="Items run at once (default: the supervisor's).")
@click.option("--build-id", default=None, help="Reported to Flow (default: the supervisor's).")
@click.option("--health-port", type=click.IntRange(0, 65535), default=None,
              help="Serve health checks on this port (default: none).")
@click.option("--supervisor-id", default=None, help="Default: generated.")
@click.option("--drain-s", type=click.FloatRange(min=0), default=None,
              help="On SIGTERM: seconds to let running work finish before handing it back "
                   "(default: the supervisor's, 30).")
@click.pass_obj
def supervisor_run(ctx: Ctx, module, workers, slots, build_id, health_port, supervisor_id,
                   drain_s):
    """Run MODULE's @coda.workflow and @coda.task functions in worker processes, in the
    foreground, until Ctrl-C or SIGTERM."""
    if not ctx.address:
        raise click.UsageError("no Flow address: pass --address HOST:PORT[,...] or set "
                               "CODA_ADDRESS (coda-flow dev prints it)")
    try:
        addresses = parse_addresses(ctx.address)
    except CodaError as exc:
        raise click.BadParameter(exc.message, param_hint="--address / CODA_ADDRESS") from None
    try:  # lazily: the rest of the CLI works without the supervisor package
        from coda.supervisor.supervisor import run_supervisor
    except ImportError as exc:
        raise click.ClickException(f"the supervisor is not available: {exc}") from None
    extra = {"drain_s": drain_s} if drain_s is not None else {}
    code = _run(lambda: run_supervisor(
        addresses, module, workers=workers or os.cpu_count() or 1, slots=slots,
        build_id=build_id, health_port=health_port, supervisor_id=supervisor_id, **extra))
    sys.exit(code)


# Commands defined elsewhere register on the groups above when imported.
from coda.client import cli_cluster  # noqa: E402,F401
from coda.client import cli_state  # noqa: E402,F401
from coda.client import cli_visibility  # noqa: E402,F401

if __name__ == "__main__":
    # `python -m coda.client.cli`: run the imported module's group, on which cli_state
    # registered its commands (this __main__ copy's groups have none of them).
    from coda.client.cli import main as imported_main
    imported_main()
