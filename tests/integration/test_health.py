"""Health and drain of a real three-node cluster (docs/operating.md).

Covered: the standard gRPC health service on every node's client port (Check for the
server and for coda.api.v1.Flow, an unknown service, Watch); `coda cluster status`
(flags, summary line, JSON fields, exit codes) on a healthy cluster, after a node is
stopped with SIGTERM (UNREACHABLE, exit 3) and with a replica made to lag by SIGSTOP
(LAGGING); `coda cluster health`; `coda supervisor health` against a real supervisor;
and the clean stop of a node leading shards: health NOT_SERVING first (a Watch stream
sees it), exit 0, its shards led elsewhere within one election round trip (well before
an election timeout could elect anyone), and no writer seeing an unknown outcome.
Measured numbers are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli_helpers import as_json, coda, module_cluster, nodes_survive, ok
from coda.errors import CodaError
from coda.flow.config import RaftTiming
from exec_helpers import wait_for, write_module
from harness import StartStream, SupervisorProcess, free_port_block

pytestmark = pytest.mark.cluster

SHARDS = 2
FLOW = "coda.api.v1.Flow"
EXIT_PROBLEMS = 3
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Followers elect on their own only after election_timeout_min_s (1.5 s) without a
# leader; a hand-off must beat that. Status is sampled every 0.25 s per node, polled here
# every 0.05 s: a hand-off of ~20 ms shows up within ~0.5 s.
ELECTION_TIMEOUT_MIN_S = RaftTiming().election_timeout_min_s
STOP_BOUND_S = 8.0   # grace 2 s + hand-off 3 s at most, plus closing; normally ~0.4 s
LAG_WRITES = 300     # acked starts while the victim is paused (each at least one entry)
LAG_THRESHOLD = 100

MODULE = '''
import coda


@coda.task(name="hh_double")
def hh_double(x):
    return 2 * x


@coda.workflow(name="hh_flow")
async def hh_flow(x):
    return await coda.context.spawn_task(hh_double, args={"x": x})
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "health", SHARDS)


@pytest.fixture(autouse=True)
def _nodes_survive(request):
    yield from nodes_survive(request)


def check(address: str, service: str = "", timeout_s: float = 3.0) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s).status


def status_cli(address: str, *args: str):
    return coda("--timeout", "10", "--json", "cluster", "status", *args, address=address)


# --- a healthy cluster -----------------------------------------------------------------------

def test_every_node_serves_the_grpc_health_service(cluster):
    for node in cluster.nodes:
        assert check(node["client"]) == SERVING, node
        assert check(node["client"], FLOW) == SERVING, node
        with pytest.raises(grpc.RpcError) as err:
            check(node["client"], "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(node["client"]) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=FLOW), timeout=5)
            assert next(stream).status == SERVING
            stream.cancel()


def test_cluster_status_of_a_healthy_cluster(cluster):
    result = status_cli(cluster.address)
    status = as_json(result)  # exit 0
    assert status["healthy"] is True and status["unreachable_nodes"] == [], status
    assert status["lag_threshold"] == 5000, status
    for s in status["shards"]:
        assert s["problems"] == [] and s["leader"], s
        for r in s["replicas"]:
            assert isinstance(r["lag"], int) and 0 <= r["lag"] <= 5000 and r["lagging"] is False, r

    lines = ok(coda("cluster", "status", address=cluster.address)).splitlines()
    assert re.fullmatch(r"OK: 2 shards with a leader, 3 nodes reachable, no replica more "
                        r"than 5000 entries behind", lines[-1]), lines
    assert not any(w in line for line in lines for w in ("NO LEADER", "LAGGING", "UNREACHABLE"))


def test_cluster_health_finds_and_checks_every_node(cluster):
    # One address given; the other members come from cluster status.
    report = as_json(coda("--json", "cluster", "health", address=cluster.nodes[1]["client"]))
    assert report["healthy"] is True, report
    assert sorted(n["address"] for n in report["nodes"]) == sorted(n["client"] for n in cluster.nodes)
    assert report["nodes"][0]["address"] == cluster.nodes[1]["client"], report
    for n in report["nodes"]:
        assert n["status"] == "SERVING" and n["services"] == {"": "SERVING", FLOW: "SERVING"}, n
    lines = ok(coda("cluster", "health", address=cluster.address)).splitlines()
    assert len(lines) == 4 and lines[-1] == "OK: 3 nodes SERVING", lines
    assert all(re.match(r"n[123] +127\.0\.0\.1:\d+ +SERVING ", line) for line in lines[:3]), lines


def test_supervisor_health(cluster, tmp_path):
    module_dir = write_module(tmp_path / "mods", "hh_mod", MODULE)
    sup = SupervisorProcess(cluster, "hh_mod", root=str(tmp_path / "sup"), module_dir=module_dir,
                            workers=2, build_id="hh-build-7").start()
    try:
        sup.wait_connected()
        address = f"127.0.0.1:{sup.health_port}"
        data = as_json(coda("--json", "supervisor", "health", "--address", address))
        assert data["healthy"] is True and data["reachable"] is True, data
        assert data["http_status"] == 200 and data["status"]["build_id"] == "hh-build-7", data
        assert len(data["status"]["workers"]) == 2, data

        lines = ok(coda("supervisor", "health", "--address", str(sup.health_port))).splitlines()
        assert lines[0].startswith(f"supervisor {sup.supervisor_id} (module hh_mod, build "
                                   f"hh-build-7): running, HEALTHY"), lines
        assert re.match(r"workers 2 alive \(pids \d+, \d+\), in flight \d+", lines[1]), lines
        assert sum(line.startswith("shard ") and " connected " in line for line in lines) == SHARDS
        assert lines[-1] == f"{SHARDS} of {SHARDS} shard sessions connected", lines
    finally:
        assert sup.stop() == 0
    gone = coda("supervisor", "health", "--address", address)
    assert gone.returncode == EXIT_PROBLEMS, (gone.returncode, gone.stdout, gone.stderr)
    assert gone.stdout.startswith("UNREACHABLE http://127.0.0.1:"), gone.stdout
    nobody = coda("--json", "supervisor", "health", "--address",
                  f"127.0.0.1:{free_port_block(1, random.Random())}")
    assert nobody.returncode == EXIT_PROBLEMS and '"reachable": false' in nobody.stdout
    bad = coda("supervisor", "health", "--address", "no-port-here")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr, bad.stderr


# --- a clean stop ----------------------------------------------------------------------------

class Watcher(threading.Thread):
    """A health Watch stream on one node, recording what it receives and how it ends."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(address)
        self.statuses: list[int] = []
        self.ended: str | None = None
        self.first = threading.Event()

    def run(self) -> None:
        stream = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=FLOW), timeout=60)
        try:
            for answer in stream:
                self.statuses.append(answer.status)
                self.first.set()
            self.ended = "OK"
        except grpc.RpcError as exc:
            self.ended = exc.code().name


class ExitWaiter(threading.Thread):
    """Records when a process exits (measured while the test polls something else)."""

    def __init__(self, proc, since: float):
        super().__init__(daemon=True)
        self.proc = proc
        self.since = since
        self.exited_s: float | None = None
        self.start()

    def run(self) -> None:
        self.proc.wait()
        self.exited_s = time.monotonic() - self.since

    def result(self, timeout_s: float) -> tuple[int, float]:
        self.join(max(0.0, self.since + timeout_s - time.monotonic()))
        assert self.exited_s is not None, f"still running {timeout_s} s after SIGTERM"
        return self.proc.returncode, self.exited_s


def wait_led_elsewhere(cluster, shards: list, victim: int, via: list, since: float) -> dict:
    """shard -> seconds from `since` until a live node other than the victim leads it."""
    done: dict[int, float] = {}
    deadline = since + 20.0
    while len(done) < len(shards) and time.monotonic() < deadline:
        try:
            status = cluster.status(via)
        except CodaError:
            continue
        now = time.monotonic()
        for s in shards:
            leader = status["shards"][s]["leader"]
            if s not in done and leader and cluster.node_index(leader) != victim:
                done[s] = now - since
        time.sleep(0.05)
    assert len(done) == len(shards), f"shards {shards} not led elsewhere within 20 s: {done}"
    return done


def test_sigterm_stops_a_leader_cleanly(make_cluster):
    cluster = make_cluster(shards=4)
    cluster.start()
    leaders = cluster.leaders()
    victim = max(range(3), key=lambda i: list(leaders.values()).count(i))
    led = sorted(s for s, i in leaders.items() if i == victim)
    survivors = [i for i in range(3) if i != victim]
    watcher = Watcher(cluster.nodes[victim]["client"])
    watcher.start()
    assert watcher.first.wait(10) and watcher.statuses == [SERVING], watcher.statuses
    stream = StartStream(cluster, cluster.address_of(survivors), "drain").start()
    try:
        stream.wait_acks(10 * cluster.shards)
        sent = time.monotonic()
        cluster.kill(victim, signal.SIGTERM)
        exit_waiter = ExitWaiter(cluster.procs[victim], sent)
        elsewhere = wait_led_elsewhere(cluster, led, victim, survivors, sent)
        code, exited_s = exit_waiter.result(STOP_BOUND_S)
        for shard in range(cluster.shards):  # every shard takes writes after the stop
            stream.wait_acks(10, shard=shard, after=time.monotonic())
    finally:
        stream.stop()
    watcher.join(10)
    print(f"\nclean stop of {cluster.nodes[victim]['id']} (leading shards {led}): SIGTERM -> "
          f"exit {exited_s:.3f} s; -> led elsewhere (seen in status) "
          f"{ {s: round(t, 3) for s, t in elsewhere.items()} }; {len(stream.acked)} acked, "
          f"{len(stream.unknown)} unknown")

    assert code == 0, cluster.read_log(victim)[-3000:]
    assert led and max(elsewhere.values()) < ELECTION_TIMEOUT_MIN_S, elsewhere
    assert watcher.statuses == [SERVING, NOT_SERVING], watcher.statuses
    assert watcher.ended is not None, "the Watch stream did not end with the node"
    log = cluster.read_log(victim)
    assert f"leadership of shards {led} handed off" in log, log[-3000:]
    assert not stream.errors and not stream.unknown, (stream.errors[:5], sorted(stream.unknown)[:5])
    assert_flags_the_stopped_node(cluster, victim, survivors)


def assert_flags_the_stopped_node(cluster, victim: int, survivors: list) -> None:
    victim_id = cluster.nodes[victim]["id"]
    with pytest.raises(grpc.RpcError) as err:
        check(cluster.nodes[victim]["client"], timeout_s=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    result = status_cli(cluster.address)
    assert result.returncode == EXIT_PROBLEMS, (result.returncode, result.stdout, result.stderr)
    status = json.loads(result.stdout)
    assert status["healthy"] is False and status["unreachable_nodes"] == [victim_id], status
    for s in status["shards"]:
        assert s["leader"] in {cluster.nodes[i]["client"] for i in survivors}, s
        assert s["problems"] == [{"kind": "UNREACHABLE", "node_id": victim_id,
                                  "address": cluster.nodes[victim]["client"]}], s
    human = coda("cluster", "status", address=cluster.address)
    assert human.returncode == EXIT_PROBLEMS, human.stderr
    lines = human.stdout.splitlines()
    assert sum(line.startswith(f"    {victim_id} ") and line.endswith("UNREACHABLE")
               for line in lines) == cluster.shards, lines
    assert lines[-1] == f"PROBLEMS: unreachable node(s): {victim_id}", lines

    health = coda("--json", "cluster", "health", address=cluster.address)
    assert health.returncode == EXIT_PROBLEMS, (health.stdout, health.stderr)
    by_id = {n["node_id"]: n["status"] for n in json.loads(health.stdout)["nodes"]}
    assert by_id == {n["id"]: ("UNREACHABLE" if n["id"] == victim_id else "SERVING")
                     for n in cluster.nodes}, by_id


# --- lag -------------------------------------------------------------------------------------

def test_a_paused_replica_is_flagged_lagging(make_cluster):
    """SIGSTOP a node for longer than the Raft connection timeout while others write:
    once resumed it answers status calls but needs a moment (reconnection, then catch-up)
    before its applied index reaches its leaders' commit index: LAGGING meanwhile."""
    cluster = make_cluster(shards=SHARDS)
    cluster.start()
    leaders = cluster.leaders()
    victim = min(range(3), key=lambda i: list(leaders.values()).count(i))
    victim_id = cluster.nodes[victim]["id"]
    pid = cluster.procs[victim].pid
    stream = StartStream(cluster, cluster.address_of([i for i in range(3) if i != victim]),
                         "lag").start()
    try:
        stream.wait_acks(10)
        os.kill(pid, signal.SIGSTOP)
        try:
            paused = time.monotonic()
            stream.wait_acks(LAG_WRITES, after=paused)
            time.sleep(max(0.0, paused + RaftTiming().connection_timeout_s + 0.5 - time.monotonic()))
        finally:
            os.kill(pid, signal.SIGCONT)
        flagged = wait_for(lambda: lagging_status(cluster, victim_id), 15, "a LAGGING flag",
                           poll_s=0)
    finally:
        stream.stop()
    lagging = [p for s in flagged["shards"] for p in s["problems"] if p["kind"] == "LAGGING"]
    assert lagging and all(p["node_id"] == victim_id and p["lag"] > LAG_THRESHOLD
                           for p in lagging), flagged
    assert flagged["healthy"] is False and flagged["unreachable_nodes"] == [], flagged
    cluster.wait_converged()  # caught up: the flag clears, exit 0 again
    assert as_json(status_cli(cluster.address, "--lag-threshold", str(LAG_THRESHOLD)))["healthy"]


def lagging_status(cluster, victim_id: str) -> dict | None:
    """One `coda cluster status --json` with a low threshold; the answer if it exits 3
    flagging the victim LAGGING (it may also still be unreachable, then None)."""
    result = status_cli(cluster.address, "--lag-threshold", str(LAG_THRESHOLD))
    if result.returncode != EXIT_PROBLEMS:
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        return None
    status = json.loads(result.stdout)
    flagged = any(p["kind"] == "LAGGING" and p["node_id"] == victim_id
                  for s in status["shards"] for p in s["problems"])
    return status if flagged and not status["unreachable_nodes"] else None
