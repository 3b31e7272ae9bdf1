"""`coda workflow list|describe|history` and `coda supervisor list`: looking at what runs.

Registered on the groups of coda.client.cli when it is imported. Every command prints a
readable form, or JSON with --json (global or after the command). Listing every page
(--all) reports its progress on stderr when stderr is a terminal, or with --progress.
"""

from __future__ import annotations

import datetime
import re
import sys
import time

import click

from coda.client.cli import (Ctx, _compact, _emit, _run, _time, _use_json, event_to_json,
                             json_flag, plain, supervisor, workflow)
from coda.client.progress import Progress
from coda.flow import model, visibility

_AGO = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TimeBound(click.ParamType):
    """An instant: ISO-8601 with a UTC offset (2024-05-01T02:00:00Z), or how long ago
    (90s, 15m, 2h, 7d). Converted to ms since the epoch."""
    name = "TIME"

    def convert(self, value, param, click_ctx):
        if isinstance(value, int):
            return value
        text = value.strip()
        ago = _AGO.match(text)
        if ago:
            return int((time.time() - float(ago.group(1)) * _UNIT_S[ago.group(2)]) * 1000)
        if text[-1:] in ("z", "Z"):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither an ISO-8601 time (2024-05-01T02:00:00Z) nor a "
                      "time ago (90s, 15m, 2h, 7d)", param, click_ctx)
        if moment.tzinfo is None:
            self.fail(f"{value!r} has no UTC offset: add one such as Z or +02:00",
                      param, click_ctx)
        return int(moment.timestamp() * 1000)


@workflow.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(model.WORKFLOW_STATUSES),
              help="Repeatable: any of these.")
@click.option("--type", "types", multiple=True, help="Workflow type (repeatable).")
@click.option("--build-id", "build_ids", multiple=True,
              help="Runs pinned to this build (repeatable): what an old build still runs.")
@click.option("--prefix", "id_prefix", default="", help="Workflow ids starting with this.")
@click.option("--started-after", type=TimeBound(), default=0, help="Started at or after.")
@click.option("--started-before", type=TimeBound(), default=0, help="Started before.")
@click.option("--closed-after", type=TimeBound(), default=0,
              help="Closed at or after (closed runs only).")
@click.option("--closed-before", type=TimeBound(), default=0,
              help="Closed before (closed runs only).")
@click.option("--order", "order_by", type=click.Choice(visibility.ORDERS), default="workflow_id",
              show_default=True, help='"-" first: descending; by close_time: closed runs only.')
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--page-token", default="", help="Continue from a previous page.")
@click.option("--all", "fetch_all", is_flag=True, help="Follow page tokens to the end.")
@click.option("--progress/--no-progress", default=None,
              help="Progress of --all on stderr (default: when stderr is a terminal).")
@json_flag
@click.pass_obj
def workflow_list(ctx: Ctx, statuses, types, build_ids, id_prefix, started_after,
                  started_before, closed_after, closed_before, order_by, page_size, page_token,
                  fetch_all, progress, local_json):
    """Workflows (their current runs) across all shards, filtered, in the order asked."""
    _use_json(ctx, local_json)
    filters = dict(statuses=statuses, workflow_types=types, build_ids=build_ids,
                   workflow_id_prefix=id_prefix, start_time_from_ms=started_after,
                   start_time_to_ms=started_before, close_time_from_ms=closed_after,
                   close_time_to_ms=closed_before, order_by=order_by)
    meter = Progress("listed", "workflows", enabled=fetch_all and (
        progress if progress is not None else sys.stderr.isatty()))
    items: list[dict] = []
    token = page_token.encode()
    with ctx.client() as client:
        while True:
            page, token = _run(lambda: client.list_workflows(
                page_size=page_size, page_token=token, **filters))
            items += page
            meter.add(len(page), step="pages")
            if not (fetch_all and token):
                break
    meter.done()
    _emit(ctx, {"workflows": plain(items), "next_page_token": token.decode() or None},
          _echo_list)


def _echo_list(d: dict) -> None:
    if d["workflows"]:
        click.echo(f"{'WORKFLOW ID':40s} {'TYPE':20s} {'STATUS':16s} {'STARTED':19s} CLOSED")
    for w in d["workflows"]:
        click.echo(f"{w['workflow_id']:40s} {w['workflow_type']:20s} {w['status']:16s} "
                   f"{_time(w['start_time_ms'])} {_time(w['close_time_ms'])}")
    click.echo(f"({len(d['workflows'])} workflows)")
    if d["next_page_token"]:
        click.echo(f"next page: --page-token {d['next_page_token']}")


@workflow.command("describe")
@click.argument("workflow_id")
@click.option("--run-id", default=None)
@json_flag
@click.pass_obj
def workflow_describe(ctx: Ctx, workflow_id, run_id, local_json):
    """Status of a workflow's current (or given) run: attempt, result or failure, and
    while it runs its pending tasks and timers."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        _emit(ctx, plain(_run(lambda: client.describe_workflow(workflow_id, run_id))),
              _echo_describe)


_DESCRIBE_FIELDS = ("workflow_id", "run_id", "workflow_type", "status", "attempt", "shard",
                    "build_id", "history_length", "history_bytes", "open_tasks", "queued_on",
                    "result", "failure", "workflow_task_failure", "cancel_requested",
                    "continued_from_run_id", "continued_as_run_id", "continue_as_new_suggested")


def _echo_describe(w: dict) -> None:
    for key in _DESCRIBE_FIELDS:
        value = w.get(key)
        if value in (None, False, "") and key not in ("status", "result"):
            continue  # what does not apply to this run is left out
        click.echo(f"{key:26s} {_compact(value) if isinstance(value, (dict, list)) else value}")
    click.echo(f"{'started':26s} {_time(w['start_time_ms'])}")
    click.echo(f"{'closed':26s} {_time(w['close_time_ms'])}")
    tasks, timers = w.get("pending_tasks") or [], w.get("pending_timers") or []
    if tasks:
        click.echo(f"pending tasks ({len(tasks)}):")
    for t in tasks:
        where = f" on {t['supervisor_id']}" if t["supervisor_id"] else ""
        retry = f", retry at {_time(t['retry_time_ms'])}" if t["retry_time_ms"] else ""
        click.echo(f"  {t['key']:24s} {t['task_type']:20s} {t['state']:8s} attempt "
                   f"{t['attempt']}{where}{retry}")
        if t["last_failure"]:
            click.echo(f"    last failure: {t['last_failure']}")
    if timers:
        click.echo(f"pending timers ({len(timers)}):")
    for t in timers:
        click.echo(f"  {t['key']:24s} fires {_time(t['fire_time_ms'])}")
    if w.get("pending_truncated"):
        click.echo("  (more pending than shown)")


@workflow.command("history")
@click.argument("workflow_id")
@click.option("--run-id", default=None, help="Default: the current run.")
@json_flag
@click.pass_obj
def workflow_history(ctx: Ctx, workflow_id, run_id, local_json):
    """A run's events in order, as a timeline (time since the run started, how long each
    task took). With --json: a JSON list of the events; payload bytes are decoded from
    msgpack, or shown as {"base64": ...} when they are not msgpack."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        events = _run(lambda: client.workflow_history(workflow_id, run_id))
    _emit(ctx, [event_to_json(e) for e in events], echo_timeline)


def echo_timeline(events: list[dict]) -> None:
    """One line an event: +seconds since the first event, type, what it says; a task's
    completion or failure also shows how long since it was scheduled."""
    if not events:
        click.echo("(no events)")
        return
    first_ms = events[0].get("time_ms") or 0
    click.echo(f"run started {_time(first_ms)} UTC; {len(events)} events")
    scheduled_ms: dict[str, int] = {}
    for event in events:
        kind, at_ms = event.get("type", "-"), event.get("time_ms") or first_ms
        key = event.get("key")
        took = ""
        if kind == "TaskScheduled" and key is not None:
            scheduled_ms[key] = at_ms
        elif kind in ("TaskCompleted", "TaskFailed") and key in scheduled_ms:
            took = f"  ({(at_ms - scheduled_ms[key]) / 1000:.3f}s)"
        rest = " ".join(f"{k}={_compact(v)}" for k, v in event.items()
                        if k not in ("event_id", "type", "time_ms"))
        if len(rest) > 160:
            rest = rest[:157] + "..."
        click.echo(f"{event.get('event_id', '-'):>5} +{(at_ms - first_ms) / 1000:9.3f}s "
                   f"{kind:24s} {rest}{took}".rstrip())


@supervisor.command("list")
@json_flag
@click.pass_obj
def supervisor_list(ctx: Ctx, local_json):
    """Supervisors connected now (a live lease), their builds and registered types."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        _emit(ctx, _run(client.list_supervisors), _echo_supervisors)


def _echo_supervisors(d: dict) -> None:
    for s in d["supervisors"]:
        click.echo(f"{s['supervisor_id']}  build {s['build_id'] or '-'}  shards "
                   f"{','.join(map(str, s['shards']))}  registered "
                   f"{_time(s['registered_time_ms'])}")
        click.echo(f"  workflows: {', '.join(s['workflow_types']) or '-'}")
        click.echo(f"  tasks:     {', '.join(s['task_types']) or '-'}")
    click.echo(f"({len(d['supervisors'])} supervisors)")
    if d["unanswered_shards"]:
        click.echo(f"shards not answering: {d['unanswered_shards']} (the list may miss "
                   "supervisors registered only there)")
