"""`coda`: the client CLI. Every command takes --address (or CODA_ADDRESS) and --json."""

from __future__ import annotations

import datetime
import json
import sys

import click

from coda.client.client import SyncClient
from coda.errors import CodaError
from coda.flow import model


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
    """Start, describe and list workflows."""


@workflow.command("start")
@click.argument("workflow_type")
@click.option("--id", "workflow_id", help="Workflow id (default: TYPE-<uuid>).")
@click.option("--args", "args_json", default="{}", show_default=True,
              help="Workflow arguments as a JSON object.")
@click.option("--reuse-policy", type=click.Choice(model.REUSE_POLICIES),
              default=model.ALLOW_DUPLICATE, show_default=True)
@click.option("--request-id", help="Idempotency key; repeat it to retry safely.")
@click.pass_obj
def workflow_start(ctx: Ctx, workflow_type, workflow_id, args_json, reuse_policy, request_id):
    """Start a workflow (it stays queued until a supervisor runs its type)."""
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--args") from None
    with ctx.client() as client:
        handle = _run(lambda: client.start_workflow(
            workflow_type, args, workflow_id=workflow_id, reuse_policy=reuse_policy,
            request_id=request_id))
    data = {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "started": handle.started}
    _emit(ctx, data, lambda d: click.echo(
        f"started {d['workflow_id']} run {d['run_id']}" + ('' if d['started'] else ' (an earlier call with this request id started it)')))


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
        _emit(ctx, _run(lambda: client.describe_workflow(workflow_id, run_id)), human)


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
    data = {"workflows": items, "next_page_token": token.decode() or None}

    def human(d):
        for w in d["workflows"]:
            click.echo(f"{w['workflow_id']:40s} {w['workflow_type']:20s} {w['status']:10s} "
                       f"{_time(w['start_time_ms'])}")
        if d["next_page_token"]:
            click.echo(f"next page: --page-token {d['next_page_token']}")

    _emit(ctx, data, human)


if __name__ == "__main__":
    main()
