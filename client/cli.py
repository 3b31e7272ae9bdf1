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
def cluster() -> None:
    """The Flow cluster."""


@cluster.command("status")
@click.pass_obj
def cluster_status(ctx: Ctx) -> None:
    """Shards, their leaders and every replica's Raft state."""
    def human(st):
        click.echo(f"{st['shard_count']} shards (answered by {st['answered_by']})")
        for s in st["shards"]:
            flag = "" if s["leader"] else "  NO LEADER"
            applied = [r["applied_index"] for r in s["replicas"] if r["reachable"]]
            lag = max(applied) - min(applied) if applied else 0
            click.echo(f"shard {s['shard']:3d}  leader {s['leader'] or '-':21s}  "
                       f"queues {sum(s['queue_depths'].values())}{flag}"
                       + (f"  LAG {lag}" if lag > 1000 else ""))
            for r in s["replicas"]:
                click.echo(f"    {r['node_id']:4s} {r['address']:21s} {r['role']:11s} "
                           f"term {r['term']:<4d} commit {r['commit_index']:<8d} "
                           f"applied {r['applied_index']:<8d} log {r['log_length']}")

    with ctx.client() as client:
        _emit(ctx, _run(client.cluster_status), human)


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
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from None
    if not isinstance(args, dict):
        raise click.BadParameter("must be a JSON object of the workflow's keyword arguments, "
                                 f"got {type(args).__name__}", param_hint="--args")
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


def _echo_started(data: dict) -> None:
    click.echo(f"started {data['workflow_id']} run {data['run_id']}" + (
        "" if data["started"] else " (an earlier call with this request id started it)"))


@workflow.command("describe")
@click.argument("workflow_id")
@click.option("--run-id", default=None)
@click.pass_obj
def workflow_describe(ctx: Ctx, workflow_id, run_id):
    """Status and details of a workflow's current (or given) run."""
    def human(w):
        for key in ("workflow_id", "run_id", "workflow_type", "status", "attempt",
                    "history_length", "shard", "queued_on", "result", "failure"):
            click.echo(f"{key:15s} {w[key] if w[key] is not None else '-'}")
        click.echo(f"{'started':15s} {_time(w['start_time_ms'])}")
        click.echo(f"{'closed':15s} {_time(w['close_time_ms'])}")

    with ctx.client() as client:
        _emit(ctx, plain(_run(lambda: client.describe_workflow(workflow_id, run_id))), human)


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


@workflow.command("history")
@click.argument("workflow_id")
@click.option("--run-id", default=None, help="Default: the current run.")
@json_flag
@click.pass_obj
def workflow_history(ctx: Ctx, workflow_id, run_id, local_json):
    """A run's events in order. With --json: a JSON list of the events; payload bytes are
    decoded from msgpack, or shown as {"base64": ...} when they are not msgpack."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        events = _run(lambda: client.workflow_history(workflow_id, run_id))
    _emit(ctx, [event_to_json(e) for e in events], _echo_events)


def _echo_events(events: list[dict]) -> None:
    for event in events:
        rest = " ".join(f"{k}={_compact(v)}" for k, v in event.items()
                        if k not in ("event_id", "type", "time_ms"))
        click.echo(f"{event.get('event_id', '-'):>5} {_time(event.get('time_ms'))} "
                   f"{event.get('type', '-'):28s} {rest}".rstrip())


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


@workflow.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(model.WORKFLOW_STATUSES))
@click.option("--type", "types", multiple=True, help="Workflow type (repeatable).")
@click.option("--page-size", type=int, default=100, show_default=True)
@click.option("--page-token", default="", help="Continue from a previous page.")
@click.option("--all", "fetch_all", is_flag=True, help="Follow page tokens to the end.")
@click.pass_obj
def workflow_list(ctx: Ctx, statuses, types, page_size, page_token, fetch_all):
    """Workflows across all shards, ordered by id."""
    items: list[dict] = []
    token = page_token.encode()
    with ctx.client() as client:
        while True:
            page, token = _run(lambda: client.list_workflows(
                statuses=statuses, workflow_types=types, page_size=page_size, page_token=token))
            items += page
            if not (fetch_all and token):
                break
    data = {"workflows": plain(items), "next_page_token": token.decode() or None}

    def human(d):
        for w in d["workflows"]:
            click.echo(f"{w['workflow_id']:40s} {w['workflow_type']:20s} {w['status']:10s} "
                       f"{_time(w['start_time_ms'])}")
        if d["next_page_token"]:
            click.echo(f"next page: --page-token {d['next_page_token']}")

    _emit(ctx, data, human)


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


if __name__ == "__main__":
    main()
