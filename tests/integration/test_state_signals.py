"""Talking to running workflows (#5) on a real cluster: workflow state, signals and
broadcast variables, with real `coda-flow serve` nodes, supervisors and worker processes.

One three-node cluster (2 shards, a 64 KiB payload limit) is shared by the module, with a
supervisor of 4 workers. The propagation test adds two supervisors of one worker each,
each serving a task type of its own, so the test knows which supervisor runs what.

What is checked (each could fail):
1. a workflow reads another's state while both run, and clients read it (linearizable:
   a state set by a committed step is visible to the next read);
2. signals sent before the workflow waits are buffered, taken in order, each once;
   one workflow signals another;
3. 4 workers reading one broadcast variable 1,000 times cost only a handful of Flow
   reads (the supervisor's metrics count where each read was served);
4. after an update every supervisor serves the new version, within a measured bound;
5. bad input: a missing key, an unknown workflow, an oversized value, bad names.
"""

from __future__ import annotations

import re
import statistics
import time
import urllib.request
import uuid

import pytest

from coda.errors import Aborted, InvalidArgument, NotFound, PayloadError
from exec_helpers import wait_for, write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

PAYLOAD_BYTES_MAX = 64 * 1024
RESULT_TIMEOUT_S = 60.0
PROPAGATION_BOUND_S = 2.0

FLOWS = '''
import asyncio

import coda


@coda.workflow(name="x_producer")
async def x_producer():
    coda.context.set_state("stage", "started")
    go = await coda.context.wait_signal("go")
    coda.context.set_state("stage", "after-go")
    coda.context.set_state("go", go)
    await coda.context.wait_signal("finish")
    return "finished"


@coda.workflow(name="x_peer")
async def x_peer(producer):
    seen = [await coda.context.get_state("stage", workflow_id=producer)]
    await coda.context.signal_workflow(producer, "go", {"from": coda.context.workflow_id()})
    for _ in range(100):
        stage = await coda.context.get_state("stage", workflow_id=producer)
        if stage != seen[-1]:
            seen.append(stage)
        if stage == "after-go":
            break
        await coda.context.sleep(0.1)
    seen.append(await coda.context.get_state("go", workflow_id=producer))
    return seen


@coda.workflow(name="x_collect")
async def x_collect(n, name="item"):
    return [await coda.context.wait_signal(name) for _ in range(n)]


@coda.workflow(name="x_signal_other")
async def x_signal_other(target):
    try:
        await coda.context.signal_workflow(target, "item", 1)
        return "sent"
    except coda.errors.NotFound as exc:
        return f"refused: {exc}"


@coda.task(name="x_read_many")
async def x_read_many(name, times):
    versions = set()
    for _ in range(times):
        versions.add((await coda.context.get_broadcast(name))["v"])
    return sorted(versions)


@coda.task(name="x_read_sync")
def x_read_sync(name):
    return coda.context.get_broadcast(name, default=None)


@coda.workflow(name="x_broadcast_fan")
async def x_broadcast_fan(name, tasks, times):
    before = await coda.context.get_broadcast(name)
    spawned = [coda.context.spawn_task(x_read_many, args={"name": name, "times": times})
               for _ in range(tasks)]
    seen = await coda.context.await_all(spawned)
    after = await coda.context.get_broadcast(name)
    sync = await coda.context.spawn_task(x_read_sync, args={"name": name})
    return {"before": before, "after": after, "seen": seen, "sync": sync}


@coda.workflow(name="x_bad_state", retry=coda.RetryPolicy(maximum_attempts=1))
async def x_bad_state(what):
    if what == "oversized":
        coda.context.set_state("blob", "x" * 100_000)
    elif what == "missing_key":
        await coda.context.get_state("nope", workflow_id="x-unknown-workflow-id")
    return "unreachable"
'''

# One module per extra supervisor: a task type only it serves, so the test can make
# that supervisor read (and cache, and watch) a broadcast variable.
PINNED = '''
import coda


@coda.task(name="x_pinned_{tag}")
async def x_pinned(name):
    return await coda.context.get_broadcast(name)


@coda.workflow(name="x_pinned_wf_{tag}")
async def x_pinned_wf(name):
    return await coda.context.spawn_task(x_pinned, args={{"name": name}})
'''


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def of_type(history: list[dict], *types: str) -> list[dict]:
    return [e for e in history if e["type"] in types]


def metrics_text(supervisor: SupervisorProcess) -> str:
    url = f"http://127.0.0.1:{supervisor.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def broadcast_reads(supervisor: SupervisorProcess) -> dict[str, float]:
    found = re.findall(r'coda_supervisor_broadcast_reads_total\{served_by="(\w+)"\} (\S+)',
                       metrics_text(supervisor))
    return {k: float(v) for k, v in found}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    cluster = Cluster(str(root / "cluster"), shards=2, payload_bytes_max=PAYLOAD_BYTES_MAX)
    supervisor = client = None
    try:
        cluster.start()
        cluster.wait_leaders()
        module_dir = write_module(root / "flows", "state_flows", FLOWS)
        supervisor = SupervisorProcess(cluster, "state_flows", root=str(root / "supervisor"),
                                       workers=4, module_dir=module_dir)
        supervisor.start()
        supervisor.wait_connected()
        client = cluster.client(timeout_s=60.0)
        yield {"root": root, "cluster": cluster, "supervisor": supervisor, "client": client}
    finally:
        if client is not None:
            client.close()
        if supervisor is not None:
            supervisor.close()
        cluster.close()


def run(env, workflow_type, args=None):
    handle = env["client"].start_workflow(workflow_type, args, workflow_id=new_id(workflow_type))
    return handle, handle.result(timeout=RESULT_TIMEOUT_S)


# --- 1. state ----------------------------------------------------------------------------

def test_a_workflow_reads_anothers_state_while_both_run(env):
    client = env["client"]
    producer = client.start_workflow("x_producer", workflow_id=new_id("producer"))
    wait_for(lambda: _state_or_none(producer, "stage") == "started", 30, "producer's state")
    peer = client.start_workflow("x_peer", {"producer": producer.workflow_id},
                                 workflow_id=new_id("peer"))
    assert peer.result(timeout=RESULT_TIMEOUT_S) == ["started", "after-go",
                                                     {"from": peer.workflow_id}]
    # The producer was running the whole time: it still waits for "finish".
    assert producer.describe()["status"] == "RUNNING"
    assert producer.get_state("stage") == "after-go"
    assert producer.get_state("go") == {"from": peer.workflow_id}
    reads = of_type(peer.history(), "StateRead")
    assert len(reads) >= 3 and all(r["workflow_id"] == producer.workflow_id for r in reads)
    producer.signal("finish")
    assert producer.result(timeout=RESULT_TIMEOUT_S) == "finished"
    # State outlives the run: readable after it closed.
    assert producer.get_state("stage") == "after-go"
    sets = of_type(producer.history(), "StateSet")
    assert [s["key"] for s in sets] == ["stage", "stage", "go"]


def _state_or_none(handle, key):
    try:
        return handle.get_state(key)
    except NotFound:
        return None


# --- 2. signals ---------------------------------------------------------------------------

def test_signals_before_the_wait_are_buffered_in_order_each_once(env):
    client = env["client"]
    handle = client.start_workflow("x_collect", {"n": 20}, workflow_id=new_id("collect"))
    handle.signal("unrelated", "x")
    request_ids = [uuid.uuid4().hex for _ in range(20)]
    for n, request_id in enumerate(request_ids):
        handle.signal("item", n, request_id=request_id)
    # Retries of signals that were delivered deliver nothing more.
    for request_id in request_ids[:5]:
        handle.signal("item", "again", request_id=request_id)
    assert handle.result(timeout=RESULT_TIMEOUT_S) == list(range(20))
    received = of_type(handle.history(), "SignalReceived")
    assert [e["name"] for e in received].count("item") == 20
    assert [e["signal_id"] for e in received] == list(range(1, 22))


def test_a_workflow_signals_another(env):
    client = env["client"]
    target = client.start_workflow("x_collect", {"n": 1}, workflow_id=new_id("target"))
    _, sent = run(env, "x_signal_other", {"target": target.workflow_id})
    assert sent == "sent"
    assert target.result(timeout=RESULT_TIMEOUT_S) == [1]
    [received] = of_type(target.history(), "SignalReceived")
    assert received["sender"]["workflow_id"].startswith("x_signal_other")
    _, refused = run(env, "x_signal_other", {"target": "x-no-such-workflow"})
    assert refused.startswith("refused:") and "not found" in refused


# --- 3. broadcast caches --------------------------------------------------------------------

def test_four_workers_reading_a_broadcast_1000_times_cost_a_handful_of_flow_reads(env):
    client, supervisor = env["client"], env["supervisor"]
    name = new_id("bc-fan")
    version = client.broadcast.set(name, {"v": 1})
    assert client.broadcast.get_versioned(name) == (version, {"v": 1})
    before = broadcast_reads(supervisor)
    handle, result = run(env, "x_broadcast_fan", {"name": name, "tasks": 40, "times": 25})
    assert result["before"] == result["after"] == {"v": 1}
    assert result["seen"] == [[1]] * 40 and result["sync"] == {"v": 1}
    pids = {r for r in supervisor.worker_pids()}
    assert len(pids) == 4

    def counted():
        now = broadcast_reads(supervisor)
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in now}
        return delta if delta["worker_cache"] + delta["supervisor_cache"] >= 990 else None

    delta = wait_for(counted, 10, "reads counted in the supervisor's metrics", poll_s=0.3)
    # A miss per name for the supervisor, the rest from caches (1,000 task reads, 3 in
    # the workflow).
    assert delta["flow"] <= 2, delta
    assert delta["worker_cache"] + delta["supervisor_cache"] + delta["flow"] >= 1000
    recorded = of_type(handle.history(), "BroadcastRead")
    assert [r["version"] for r in recorded] == [version, version]
    assert "value" in recorded[0] and "value" not in recorded[1]  # same version: once


# --- 4. propagation to every supervisor -----------------------------------------------------

def test_every_supervisor_serves_a_new_version_within_a_bound(env, request):
    client, cluster, root = env["client"], env["cluster"], env["root"]
    extra = []
    for tag in ("a", "b"):
        module_dir = write_module(root / f"pinned_{tag}", f"pinned_{tag}", PINNED.format(tag=tag))
        sup = SupervisorProcess(cluster, f"pinned_{tag}", root=str(root / f"pinned_{tag}_run"),
                                workers=1, module_dir=module_dir)
        request.addfinalizer(sup.close)
        extra.append((tag, sup.start()))
    for _, sup in extra:
        sup.wait_connected()
    name = new_id("bc-prop")
    client.broadcast.set(name, {"v": 0})
    for tag, _ in extra:  # each supervisor now caches and watches the name
        assert run(env, f"x_pinned_wf_{tag}", {"name": name})[1] == {"v": 0}
    supervisors = [env["supervisor"]] + [s for _, s in extra]
    run(env, "x_broadcast_fan", {"name": name, "tasks": 1, "times": 1})
    latencies_s = []
    for n in range(1, 21):
        version = client.broadcast.set(name, {"v": n})
        acked_s = time.monotonic()
        for sup in supervisors:
            wait_for(lambda: _cached_version(sup, name) >= version, 10,
                     f"version {version} on {sup.supervisor_id}", poll_s=0.002)
        latencies_s.append(time.monotonic() - acked_s)
    latencies_s.sort()
    print(f"broadcast propagation to 3 supervisors after the ack: p50 "
          f"{statistics.median(latencies_s) * 1000:.1f} ms, max {latencies_s[-1] * 1000:.1f} ms")
    assert latencies_s[-1] < PROPAGATION_BOUND_S, latencies_s
    # The workers got it too: a task on each extra supervisor reads the newest value.
    for tag, _ in extra:
        assert run(env, f"x_pinned_wf_{tag}", {"name": name})[1] == {"v": 20}
    lag = re.search(r"coda_supervisor_broadcast_update_lag_seconds_count (\S+)",
                    metrics_text(extra[0][1]))
    assert lag and float(lag.group(1)) >= 20


def _cached_version(supervisor: SupervisorProcess, name: str) -> int:
    broadcasts = supervisor.health().get("broadcasts") or {}
    return (broadcasts.get("versions") or {}).get(name, 0)


# --- 5. bad input ---------------------------------------------------------------------------

def test_bad_input_gets_clear_errors(env):
    client = env["client"]
    handle = client.start_workflow("x_collect", {"n": 1}, workflow_id=new_id("bad"))
    with pytest.raises(NotFound, match="no state key 'missing'"):
        handle.get_state("missing")
    assert handle.get_state("missing", default=7) == 7
    with pytest.raises(NotFound, match="not found"):
        client.get_workflow_state("x-no-such-workflow", "stage", default=None)
    with pytest.raises(NotFound, match="not found"):
        client.signal_workflow("x-no-such-workflow", "item", 1)
    with pytest.raises(PayloadError, match="over the limit"):
        handle.signal("item", "x" * (PAYLOAD_BYTES_MAX * 40))
    with pytest.raises(InvalidArgument, match="signal name"):
        handle.signal("", 1)
    with pytest.raises(InvalidArgument, match="state key"):
        handle.get_state("k" * 65)
    name = new_id("bc-bad")
    with pytest.raises(NotFound, match="is not set"):
        client.broadcast.get(name)
    assert client.broadcast.get(name, default="d") == "d"
    with pytest.raises(InvalidArgument, match="over the limit"):
        client.broadcast.set(name, "x" * (PAYLOAD_BYTES_MAX + 1))  # the cluster's limit
    v1 = client.broadcast.set(name, 1)
    with pytest.raises(Aborted, match=f"at version {v1}"):
        client.broadcast.set(name, 2, if_version=v1 + 5)
    assert client.broadcast.set(name, 2, if_version=v1) == v1 + 1
    assert client.broadcast.delete(name) == v1 + 2
    with pytest.raises(NotFound):
        client.broadcast.get(name)
    handle.signal("item", "done")
    assert handle.result(timeout=RESULT_TIMEOUT_S) == ["done"]
    with pytest.raises(NotFound, match="is not running"):
        handle.signal("item", 1)
    # In a workflow: an oversized state value and a missing workflow fail it clearly.
    for what, expected in (("oversized", "PayloadError"), ("missing_key", "NotFound")):
        bad = client.start_workflow("x_bad_state", {"what": what}, workflow_id=new_id(what))
        with pytest.raises(Exception) as failure:
            bad.result(timeout=RESULT_TIMEOUT_S)
        assert expected in str(failure.value), failure.value


# --- 6. the CLI -----------------------------------------------------------------------------

def test_cli_signals_reads_state_and_sets_broadcasts(env):
    from cli_helpers import as_json, coda, failed, ok
    address = env["cluster"].address
    wid = new_id("cli-producer")
    ok(coda("workflow", "start", "x_producer", "--id", wid, address=address))
    wait_for(lambda: coda("workflow", "state", wid, "stage", address=address).returncode == 0,
             30, "the producer's first state")
    assert as_json(coda("--json", "workflow", "state", wid, "stage", address=address)) == {
        "workflow_id": wid, "key": "stage", "value": "started"}
    ok(coda("workflow", "signal", wid, "go", "--payload", '{"by": "cli"}', address=address))
    wait_for(lambda: as_json(coda("--json", "workflow", "state", wid, "go",
                                  address=address))["value"] == {"by": "cli"}, 30, "go state")
    assert ok(coda("workflow", "state", wid, "stage", address=address)).strip() == '"after-go"'
    ok(coda("workflow", "signal", wid, "finish", address=address))
    failed(coda("workflow", "state", wid, "nope", address=address), 1, "NOT_FOUND", "nope")
    failed(coda("workflow", "signal", wid, "go", "--payload", "{bad", address=address), 2,
           "not valid JSON")
    name = new_id("cli-bc")
    assert as_json(coda("--json", "broadcast", "set", name, '[1, 2]', address=address)) == {
        "name": name, "version": 1}
    assert as_json(coda("--json", "broadcast", "get", name, address=address)) == {
        "name": name, "version": 1, "value": [1, 2]}
    failed(coda("broadcast", "set", name, '3', "--if-version", "7", address=address), 1,
           "ABORTED", "at version 1")
    assert "version 2" in ok(coda("broadcast", "delete", name, address=address))
    failed(coda("broadcast", "get", name, address=address), 1, "NOT_FOUND", "is not set")
