"""`coda cluster status|health` and `coda supervisor health`: is the system well?

Registered on the groups of coda.client.cli when it is imported (docs/operating.md).

- `cluster status` shows every shard's leader and replicas and flags what needs a look:
  NO LEADER (a shard that can't take writes), LAGGING (a replica whose applied index
  trails its shard leader's commit index by more than --lag-threshold entries) and
  UNREACHABLE (a node that did not answer the status call); then a summary line.
- `cluster health` asks each node the standard gRPC health Check (flow/health.py).
- `supervisor health` reads a supervisor's HTTP /health (`supervisor run --health-port`).

Exit codes, so scripts and cron jobs can use them: 0 all well; 3 the answer flags a
problem (anything flagged, a node not SERVING, a supervisor unhealthy or unreachable);
1 no answer at all (no Flow node answered `cluster status`), as for every coda command;
2 usage errors.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coda.client.cli import Ctx, _emit, _run, _use_json, json_flag, main, supervisor
from coda.client.client import SyncClient, parse_addresses
from coda.errors import CodaError

EXIT_PROBLEMS = 3
# 5000 entries: the default raft.log_compaction_min_entries, so a replica further behind
# than that is likely past what its leader still keeps in the log and will need a full
# snapshot install. It is also well above the sampling noise: each node refreshes the
# status it reports every 0.25 s, which at a busy shard's ~10k commits/s is ~2.5k entries.
LAG_THRESHOLD_DEFAULT = 5000
FLOW_HEALTH_SERVICE = "coda.api.v1.Flow"   # flow/health.py: FLOW_SERVICE
HEALTH_SERVICES = ("", FLOW_HEALTH_SERVICE)
# One probe: a node that can't answer a health check in this long is not healthy.
HEALTH_CHECK_TIMEOUT_S = 3.0
DISCOVERY_TIMEOUT_S = 5.0


@main.group()
def cluster() -> None:
    """The Flow cluster: status and health."""


# --- cluster status --------------------------------------------------------------------------

def assess(status: dict, lag_threshold: int) -> dict:
    """`status` (Client.cluster_status) with its problems flagged, as a new dict.

    Per replica: "lag" (entries its applied index trails the shard leader's commit
    index; None without a leader or when unreachable) and "lagging". Per shard:
    "problems", a list of {"kind": NO_LEADER | LAGGING | UNREACHABLE, ...}. At the top:
    "unreachable_nodes", "lag_threshold" and "healthy" (no problem anywhere)."""
    shards = [_assess_shard(s, lag_threshold) for s in status["shards"]]
    unreachable = sorted({p["node_id"] for s in shards for p in s["problems"]
                          if p["kind"] == "UNREACHABLE"})
    return {**status, "shards": shards, "unreachable_nodes": unreachable,
            "lag_threshold": lag_threshold,
            "healthy": not any(s["problems"] for s in shards)}


def _assess_shard(shard: dict, lag_threshold: int) -> dict:
    problems = []
    leader = next((r for r in shard["replicas"] if shard["leader"]
                   and r["address"] == shard["leader"] and r["reachable"]), None)
    if leader is None:
        claiming = sum(r["role"] == "leader" and r["reachable"] for r in shard["replicas"])
        problems.append({"kind": "NO_LEADER", "claiming": claiming})
    replicas = []
    for r in shard["replicas"]:
        lag = (max(0, leader["commit_index"] - r["applied_index"])
               if leader is not None and r["reachable"] else None)
        lagging = lag is not None and lag > lag_threshold
        replicas.append({**r, "lag": lag, "lagging": lagging})
        if not r["reachable"]:
            problems.append({"kind": "UNREACHABLE", "node_id": r["node_id"],
                             "address": r["address"]})
        elif lagging:
            problems.append({"kind": "LAGGING", "node_id": r["node_id"], "lag": lag})
    return {**shard, "replicas": replicas, "problems": problems}


def summary(assessed: dict) -> str:
    shards = assessed["shards"]
    no_leader = [s["shard"] for s in shards if any(p["kind"] == "NO_LEADER" for p in s["problems"])]
    lagging = [f"shard {s['shard']} on {p['node_id']}" for s in shards for p in s["problems"]
               if p["kind"] == "LAGGING"]
    nodes = {r["node_id"] for s in shards for r in s["replicas"]}
    if assessed["healthy"]:
        return (f"OK: {len(shards)} shards with a leader, {len(nodes)} nodes reachable, no "
                f"replica more than {assessed['lag_threshold']} entries behind")
    parts = []
    if no_leader:
        parts.append(f"{len(no_leader)} shard(s) without a leader ({', '.join(map(str, no_leader))})")
    if lagging:
        parts.append(f"{len(lagging)} lagging replica(s) ({', '.join(lagging)})")
    if assessed["unreachable_nodes"]:
        parts.append(f"unreachable node(s): {', '.join(assessed['unreachable_nodes'])}")
    return "PROBLEMS: " + "; ".join(parts)


def _echo_status(st: dict) -> None:
    click.echo(f"{st['shard_count']} shards (answered by {st['answered_by']})")
    for s in st["shards"]:
        flag = "  NO LEADER" if any(p["kind"] == "NO_LEADER" for p in s["problems"]) else ""
        click.echo(f"shard {s['shard']:3d}  leader {s['leader'] or '-':21s}  "
                   f"queues {sum(s['queue_depths'].values())}{flag}")
        for r in s["replicas"]:
            mark = ("  UNREACHABLE" if not r["reachable"]
                    else f"  LAGGING {r['lag']} behind" if r["lagging"] else "")
            click.echo(f"    {r['node_id']:4s} {r['address']:21s} {r['role']:11s} "
                       f"term {r['term']:<4d} commit {r['commit_index']:<8d} "
                       f"applied {r['applied_index']:<8d} log {r['log_length']}{mark}")
    click.echo(summary(st))


@cluster.command("status")
@click.option("--lag-threshold", type=click.IntRange(min=0), default=LAG_THRESHOLD_DEFAULT,
              show_default=True, metavar="ENTRIES",
              help="Flag a replica LAGGING when its applied index trails its shard "
                   "leader's commit index by more than this many Raft entries.")
@json_flag
@click.pass_obj
def cluster_status(ctx: Ctx, lag_threshold, local_json) -> None:
    """Shards, their leaders and every replica's Raft state, flagging shards with NO
    LEADER, LAGGING replicas and UNREACHABLE nodes. Exit 3 if anything is flagged."""
    _use_json(ctx, local_json)
    with ctx.client() as client:
        assessed = assess(_run(client.cluster_status), lag_threshold)
    _emit(ctx, assessed, _echo_status)
    sys.exit(0 if assessed["healthy"] else EXIT_PROBLEMS)


# --- cluster health --------------------------------------------------------------------------

def check_health(address: str, service: str, timeout_s: float) -> str:
    """One grpc.health.v1 Check: SERVING, NOT_SERVING, SERVICE_UNKNOWN, ... or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # the servicer's "unknown service"
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"  # refused, stopping (UNAVAILABLE), or too slow to answer
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def _members(ctx: Ctx, addresses: list[str]) -> list[dict]:
    """The nodes named by --address, then any other member a cluster status names."""
    nodes = [{"node_id": None, "address": a} for a in addresses]
    try:
        with SyncClient(ctx.address, timeout_s=min(ctx.timeout_s, DISCOVERY_TIMEOUT_S)) as c:
            status = c.cluster_status()
    except CodaError:
        return nodes  # nobody answered: check what we were given
    by_address = {n["address"]: n for n in nodes}
    for shard in status["shards"]:
        for r in shard["replicas"]:
            node = by_address.get(r["address"])
            if node is None:
                node = by_address[r["address"]] = {"node_id": None, "address": r["address"]}
                nodes.append(node)
            node["node_id"] = r["node_id"]
    return nodes


@cluster.command("health")
@json_flag
@click.pass_obj
def cluster_health(ctx: Ctx, local_json) -> None:
    """Ask every node the standard gRPC health Check (grpc.health.v1.Health), for the
    server ("") and for coda.api.v1.Flow. Exit 3 unless every node answers SERVING."""
    _use_json(ctx, local_json)
    if not ctx.address:
        ctx.client()  # raises the usual usage error
    try:
        addresses = parse_addresses(ctx.address)
    except CodaError as exc:
        raise click.BadParameter(exc.message, param_hint="--address / CODA_ADDRESS") from None
    nodes = _members(ctx, addresses)
    timeout_s = min(ctx.timeout_s, HEALTH_CHECK_TIMEOUT_S)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        checks = {(n["address"], s): pool.submit(check_health, n["address"], s, timeout_s)
                  for n in nodes for s in HEALTH_SERVICES}
        for n in nodes:
            n["services"] = {s: checks[(n["address"], s)].result() for s in HEALTH_SERVICES}
            n["status"] = _node_status(n["services"])
    healthy = bool(nodes) and all(n["status"] == "SERVING" for n in nodes)
    _emit(ctx, {"nodes": nodes, "healthy": healthy}, _echo_health)
    sys.exit(0 if healthy else EXIT_PROBLEMS)


def _node_status(services: dict) -> str:
    """SERVING only if both are; else the first that is not (UNREACHABLE, NOT_SERVING...)."""
    return next((v for v in services.values() if v != "SERVING"), "SERVING")


def _echo_health(d: dict) -> None:
    for n in d["nodes"]:
        services = "  ".join(f"{s or 'server'} {v}" for s, v in n["services"].items())
        click.echo(f"{n['node_id'] or '-':4s} {n['address']:21s} {n['status']:12s} ({services})")
    bad = [n["node_id"] or n["address"] for n in d["nodes"] if n["status"] != "SERVING"]
    click.echo(f"OK: {len(d['nodes'])} nodes SERVING" if d["healthy"]
               else f"PROBLEMS: not serving: {', '.join(bad)}")


# --- supervisor health -----------------------------------------------------------------------

def _health_url(address: str) -> str:
    text = address.strip().removeprefix("http://").rstrip("/").removesuffix("/health")
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{address!r} is not HOST:PORT (or a port on 127.0.0.1)",
                                 param_hint="--address")
    return f"http://{text}/health"


def fetch_supervisor_health(address: str, timeout_s: float) -> dict:
    """GET /health: {"address", "reachable", "healthy", "http_status", "status", "error"}."""
    url = _health_url(address)
    out = {"address": address, "url": url, "reachable": False, "healthy": False,
           "http_status": None, "status": None, "error": None}
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            out["http_status"], body = answer.status, answer.read()
    except urllib.error.HTTPError as exc:  # 503 while unhealthy: the body says why
        out["http_status"], body = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        out["error"] = str(getattr(exc, "reason", exc))
        return out
    try:
        out["status"] = json.loads(body)
    except ValueError:
        out["error"] = f"not a supervisor /health answer (HTTP {out['http_status']})"
        return out
    out["reachable"] = True
    out["healthy"] = out["http_status"] == 200 and bool(out["status"].get("healthy"))
    return out


def _echo_supervisor(d: dict) -> None:
    if not d["reachable"]:
        click.echo(f"UNREACHABLE {d['url']}: {d['error']}")
        return
    s = d["status"]
    click.echo(f"supervisor {s.get('supervisor_id')} (module {s.get('module')}, build "
               f"{s.get('build_id')}): {s.get('state')}, "
               f"{'HEALTHY' if d['healthy'] else 'UNHEALTHY'}")
    workers = s.get("workers") or []
    click.echo(f"workers {len(workers)} alive" + (f" (pids {', '.join(map(str, workers))})"
                                                  if workers else "")
               + f", in flight {s.get('in_flight')}, items held {s.get('items')}")
    workflow_types, task_types = s.get("workflow_types"), s.get("task_types")
    if workflow_types is None and task_types is None:
        click.echo("types not reported by this supervisor's /health")
    else:
        click.echo(f"workflow types {', '.join(workflow_types or []) or '-'}; "
                   f"task types {', '.join(task_types or []) or '-'}")
    sessions = s.get("sessions") or {}
    for shard in sorted(sessions, key=int):
        x = sessions[shard]
        click.echo(f"shard {int(shard):3d}  {'connected' if x.get('connected') else 'NOT CONNECTED':13s}"
                   f"  leader {x.get('leader') or '-':21s}  running {x.get('running')}  "
                   f"credit {x.get('credit_outstanding')}  unacked {x.get('unacked')}")
    connected = sum(1 for x in sessions.values() if x.get("connected"))
    click.echo(f"{connected} of {len(sessions)} shard sessions connected")


@supervisor.command("health")
@click.option("--address", "health_address", required=True, metavar="HOST:PORT",
              help="The supervisor's health endpoint (its --health-port; a bare port "
                   "means 127.0.0.1).")
@json_flag
@click.pass_obj
def supervisor_health(ctx: Ctx, health_address, local_json) -> None:
    """A supervisor's health: its shard sessions, workers, work in flight, build and
    types. Exit 3 if it is unhealthy (starting, draining, a shard without a session) or
    does not answer."""
    _use_json(ctx, local_json)
    data = fetch_supervisor_health(health_address, min(ctx.timeout_s, HEALTH_CHECK_TIMEOUT_S))
    _emit(ctx, data, _echo_supervisor)
    sys.exit(0 if data["healthy"] else EXIT_PROBLEMS)
