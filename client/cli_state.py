"""`coda workflow signal|state` and `coda broadcast set|get|delete` (docs/state-and-signals.md).

Registered on the groups of coda.client.cli when it is imported. Values are JSON on the
command line and msgpack on the wire; what comes back is shown as JSON.
"""

from __future__ import annotations

import json

import click

from coda.client.cli import Ctx, _compact, _emit, _run, _use_json, json_flag, main, plain, workflow


def _json_value(text: str | None, hint: str):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=hint) from None


@workflow.command("signal")
@click.argument("workflow_id")
@click.argument("name")
@click.option("--payload", "payload_json", default=None, help="The signal's payload as JSON.")
@click.option("--run-id", default=None, help="Default: the current run.")
@click.option("--request-id", help="Idempotency key; repeat it to retry safely (delivered once).")
@json_flag
@click.pass_obj
def workflow_signal(ctx: Ctx, workflow_id, name, payload_json, run_id, request_id, local_json):
    """Send a signal to a running workflow (it takes it with coda.context.wait_signal)."""
    _use_json(ctx, local_json)
    payload = _json_value(payload_json, "--payload")
    with ctx.client() as client:
        run = _run(lambda: client.signal_workflow(workflow_id, name, payload, run_id=run_id,
                                                  request_id=request_id))
    _emit(ctx, {"workflow_id": workflow_id, "run_id": run, "signal": name},
          lambda d: click.echo(f"signalled {d['workflow_id']} run {d['run_id']}: {name}"))


@workflow.command("state")
@click.argument("workflow_id")
@click.argument("key")
@click.option("--run-id", default=None, help="Default: the current run.")
@json_flag
@click.pass_obj
def workflow_state(ctx: Ctx, workflow_id, key, run_id, local_json):
    """A workflow's state value (coda.context.set_state), read linearizably."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        value = _run(lambda: client.get_workflow_state(workflow_id, key, run_id=run_id))
    _emit(ctx, {"workflow_id": workflow_id, "key": key, "value": plain(value)},
          lambda d: click.echo(_compact(d["value"])))


@main.group()
def broadcast() -> None:
    """Broadcast variables: versioned values every workflow and task can read."""


@broadcast.command("set")
@click.argument("name")
@click.argument("value_json")
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this (0: not set yet).")
@json_flag
@click.pass_obj
def broadcast_set(ctx: Ctx, name, value_json, if_version, local_json):
    """Set NAME to VALUE_JSON; prints the new version."""
    _use_json(ctx, local_json)
    value = _json_value(value_json, "VALUE_JSON")
    with ctx.client() as client:
        version = _run(lambda: client.broadcast.set(name, value, if_version=if_version))
    _emit(ctx, {"name": name, "version": version},
          lambda d: click.echo(f"{d['name']} is at version {d['version']}"))


@broadcast.command("get")
@click.argument("name")
@json_flag
@click.pass_obj
def broadcast_get(ctx: Ctx, name, local_json):
    """The current value and version (linearizable)."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        version, value = _run(lambda: client.broadcast.get_versioned(name))
    _emit(ctx, {"name": name, "version": version, "value": plain(value)},
          lambda d: click.echo(f"version {d['version']}: {_compact(d['value'])}"))


@broadcast.command("delete")
@click.argument("name")
@click.option("--if-version", type=click.IntRange(min=0), default=None)
@json_flag
@click.pass_obj
def broadcast_delete(ctx: Ctx, name, if_version, local_json):
    """Remove NAME's value (its version still moves on)."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        version = _run(lambda: client.broadcast.delete(name, if_version=if_version))
    _emit(ctx, {"name": name, "version": version},
          lambda d: click.echo(f"{d['name']} deleted at version {d['version']}"))
