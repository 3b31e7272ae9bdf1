"""Signals and broadcast watches across kill -9 of the shard leader (#5), on a real
three-node cluster with a real supervisor and workers.

1. A client sends 60 signals one after another (each with its own request id, retried
   with the same id after any error, as a careful client does) while the leader of the
   workflow's shard is killed with SIGKILL after the 15th. The workflow takes all 60:
   exactly once each, in the order sent; its history holds 60 SignalReceived events.
2. A broadcast variable a supervisor caches lives on a shard whose leader is killed; a
   version set after the failover still reaches that supervisor's cache (its watch
   follows the new leader and says what it knew, so nothing in between is missed).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from coda.errors import CodaError
from exec_helpers import wait_for, write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

SIGNALS = 60
KILL_AFTER = 15
SEND_DEADLINE_S = 90.0

FLOWS = '''
import coda


@coda.workflow(name="x_collect")
async def x_collect(n):
    return [await coda.context.wait_signal("item") for _ in range(n)]


@coda.task(name="x_read")
async def x_read(name):
    return await coda.context.get_broadcast(name)


@coda.workflow(name="x_read_wf")
async def x_read_wf(name):
    return await coda.context.spawn_task(x_read, args={"name": name})
'''


@pytest.fixture
def env(tmp_path):
    cluster = Cluster(str(tmp_path / "cluster"), shards=2)
    supervisor = None
    try:
        cluster.start()
        cluster.wait_leaders()
        module_dir = write_module(tmp_path / "flows", "fault_flows", FLOWS)
        supervisor = SupervisorProcess(cluster, "fault_flows", root=str(tmp_path / "sup"),
                                       workers=2, module_dir=module_dir)
        supervisor.start()
        supervisor.wait_connected()
        yield cluster, supervisor
    finally:
        if supervisor is not None:
            supervisor.close()
        cluster.close()


def send_all(address: str, workflow_id: str, sent: list, errors: list) -> None:
    from coda.client.client import SyncClient
    with SyncClient(address, timeout_s=20.0) as client:
        for n in range(SIGNALS):
            request_id = uuid.uuid4().hex
            deadline = time.monotonic() + SEND_DEADLINE_S
            while True:
                try:
                    client.signal_workflow(workflow_id, "item", n, request_id=request_id)
                    break
                except CodaError as exc:  # unknown outcome or no leader: same id again
                    errors.append(f"{n}: {exc.code}")
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            sent.append(n)


def test_signals_across_a_leader_kill_are_delivered_once_in_order(env):
    cluster, supervisor = env
    client = cluster.client(timeout_s=60.0)
    try:
        wid = "signals-" + uuid.uuid4().hex[:8]
        handle = client.start_workflow("x_collect", {"n": SIGNALS}, workflow_id=wid)
        sent, errors = [], []
        sender = threading.Thread(target=send_all, args=(cluster.address, wid, sent, errors))
        sender.start()
        wait_for(lambda: len(sent) >= KILL_AFTER, 30, f"{KILL_AFTER} signals sent")
        victim = cluster.leader_node(cluster.shard_of(wid))
        cluster.kill(victim)
        sender.join(SEND_DEADLINE_S * 2)
        assert not sender.is_alive() and sent == list(range(SIGNALS)), (sent, errors)
        cluster.start(victim)
        assert handle.result(timeout=90) == list(range(SIGNALS))
        received = [e for e in handle.history() if e["type"] == "SignalReceived"]
        assert len(received) == SIGNALS
        print(f"signals across the kill: {len(errors)} sends retried ({errors[:5]})")
    finally:
        client.close()


def test_a_broadcast_watch_follows_the_new_leader(env):
    cluster, supervisor = env
    client = cluster.client(timeout_s=60.0)
    try:
        name = "bc-" + uuid.uuid4().hex[:8]
        client.broadcast.set(name, {"v": 1})
        handle = client.start_workflow("x_read_wf", {"name": name}, workflow_id="r-" + name)
        assert handle.result(timeout=60) == {"v": 1}
        victim = cluster.leader_node(cluster.shard_of(name))
        cluster.kill(victim)
        version = client.broadcast.set(name, {"v": 2})
        started_s = time.monotonic()

        def cached():
            versions = (supervisor.health().get("broadcasts") or {}).get("versions") or {}
            return versions.get(name, 0) >= version

        wait_for(cached, 30, "the new version in the supervisor's cache", poll_s=0.02)
        print(f"broadcast version after a leader kill reached the supervisor "
              f"{(time.monotonic() - started_s) * 1000:.0f} ms after the ack")
        cluster.start(victim)
        again = client.start_workflow("x_read_wf", {"name": name}, workflow_id="r2-" + name)
        assert again.result(timeout=60) == {"v": 2}
    finally:
        client.close()
