"""Visibility from the `coda` CLI over 5,000 workflows on a real three-node, four-shard
cluster: every filter (status, type, id prefix, start and close time ranges, build id),
every order, paging by hand and with --all (and its progress), paging that stays exact
while workflows change state, describe with pending tasks and timers, the history
timeline, `coda supervisor list`, and bad input as clear errors.

The workflows are started to be listed, not run (no supervisor serves their types); 600
of them are terminated, so two statuses and two close states exist. One module cluster
serves every test: starting 5,000 workflows is the cost worth sharing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time

import pytest

from coda.client.client import Client
from cli_helpers import as_json, coda, failed, module_cluster, nodes_survive, ok, uid
from exec_helpers import wait_for, write_module
from harness import SupervisorProcess, start_many

pytestmark = pytest.mark.cluster

SHARDS = 4
PER_BATCH = {"a": 1500, "b": 1000}   # per type, started twice: 5,000 workflows
TERMINATED = 600


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()


async def _terminate(address: str, workflow_ids, concurrency: int = 32) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with Client(address, timeout_s=60.0) as client:
        async def one(wid):
            async with gate:
                await client.terminate_workflow(wid, reason="visibility test")
        await asyncio.gather(*(one(w) for w in workflow_ids))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "vis", SHARDS)


@pytest.fixture(autouse=True)
def _nodes_survive(request):
    yield from nodes_survive(request)


@pytest.fixture(scope="module")
def fleet(cluster):
    """5,000 workflows in two start windows, two types; 600 of type a terminated."""
    tag = uid("vis")
    types = {k: f"vis_{k}_{tag[-6:]}" for k in PER_BATCH}
    ids = {k: [] for k in PER_BATCH}
    batches = []
    t0 = time.monotonic()
    for batch in (0, 1):
        started = []
        for kind, count in PER_BATCH.items():
            wids = [f"{tag}-{kind}-{batch}{i:04d}" for i in range(count)]
            start_many(cluster.address, wids, workflow_type=types[kind], concurrency=64)
            ids[kind] += wids
            started += wids
        batches.append(started)
        if batch == 0:
            time.sleep(0.05)
            middle_ms = int(time.time() * 1000)
            time.sleep(0.05)
    start_s = time.monotonic() - t0
    terminate_from_ms = int(time.time() * 1000)
    terminated = ids["a"][::len(ids["a"]) // TERMINATED][:TERMINATED]
    asyncio.run(_terminate(cluster.address, terminated))
    print(f"visibility fleet: 5,000 starts in {start_s:.1f} s, {TERMINATED} terminated")
    return {"tag": tag, "types": types, "ids": ids, "batches": batches, "middle_ms": middle_ms,
            "terminate_from_ms": terminate_from_ms, "terminated": set(terminated),
            "all": sorted(ids["a"] + ids["b"])}


def listing(cluster, *args) -> dict:
    return as_json(coda("--json", "workflow", "list", *args, address=cluster.address))


def listed_ids(cluster, *args) -> list[str]:
    answer = listing(cluster, *args, "--all", "--page-size", "1000")
    assert answer["next_page_token"] is None, answer["next_page_token"]
    return [w["workflow_id"] for w in answer["workflows"]]


def test_all_5000_across_shards_with_progress(cluster, fleet):
    result = coda("--json", "workflow", "list", "--prefix", fleet["tag"] + "-", "--all",
                  "--page-size", "1000", "--progress", address=cluster.address)
    answer = json.loads(ok(result))
    wids = [w["workflow_id"] for w in answer["workflows"]]
    assert wids == fleet["all"]
    assert len(set(wids)) == 5000
    assert {w["shard"] for w in answer["workflows"]} == set(range(SHARDS))
    assert "listed 5,000 workflows" in result.stderr, result.stderr


def test_status_type_and_prefix_filters(cluster, fleet):
    a, b = fleet["types"]["a"], fleet["types"]["b"]
    assert listed_ids(cluster, "--type", a, "--status", "TERMINATED") == sorted(fleet["terminated"])
    running_a = sorted(set(fleet["ids"]["a"]) - fleet["terminated"])
    assert listed_ids(cluster, "--type", a, "--status", "RUNNING") == running_a
    assert listed_ids(cluster, "--type", b, "--status", "TERMINATED") == []
    assert listed_ids(cluster, "--prefix", f"{fleet['tag']}-b-1") == sorted(
        w for w in fleet["ids"]["b"] if w.startswith(f"{fleet['tag']}-b-1"))
    assert listed_ids(cluster, "--type", a, "--type", b, "--status", "RUNNING",
                      "--status", "TERMINATED") == fleet["all"]


def test_manual_paging_by_token(cluster, fleet):
    b = fleet["types"]["b"]
    token, seen, pages = "", [], 0
    while True:
        args = ["--type", b, "--page-size", "700"] + (["--page-token", token] if token else [])
        answer = listing(cluster, *args)
        assert len(answer["workflows"]) <= 700
        seen += [w["workflow_id"] for w in answer["workflows"]]
        pages += 1
        token = answer["next_page_token"]
        if not token:
            break
    assert seen == sorted(fleet["ids"]["b"]) and pages >= 3, pages


def test_start_and_close_time_ranges(cluster, fleet):
    prefix = ["--prefix", fleet["tag"] + "-"]
    middle = _iso(fleet["middle_ms"])
    assert listed_ids(cluster, *prefix, "--started-after", middle) == sorted(fleet["batches"][1])
    assert listed_ids(cluster, *prefix, "--started-before", middle) == sorted(fleet["batches"][0])
    closed = listed_ids(cluster, *prefix, "--closed-after", _iso(fleet["terminate_from_ms"]))
    assert closed == sorted(fleet["terminated"])
    assert listed_ids(cluster, *prefix, "--closed-after", "1h") == sorted(fleet["terminated"])
    assert listed_ids(cluster, *prefix, "--closed-before", _iso(fleet["terminate_from_ms"])) == []


def test_orders(cluster, fleet):
    prefix = ["--prefix", fleet["tag"] + "-"]
    answer = listing(cluster, *prefix, "--order", "-start_time", "--all", "--page-size", "900")
    starts = [w["start_time_ms"] for w in answer["workflows"]]
    assert starts == sorted(starts, reverse=True)
    assert sorted(w["workflow_id"] for w in answer["workflows"]) == fleet["all"]
    assert [w["workflow_id"] for w in answer["workflows"][:10]] != fleet["all"][:10]
    by_close = listing(cluster, *prefix, "--order", "close_time", "--all", "--page-size", "250")
    closes = [w["close_time_ms"] for w in by_close["workflows"]]
    assert closes == sorted(closes) and len(closes) == TERMINATED
    assert {w["workflow_id"] for w in by_close["workflows"]} == fleet["terminated"]
    assert listed_ids(cluster, *prefix, "--order", "-workflow_id") == fleet["all"][::-1]


def test_paging_stays_exact_while_workflows_change(cluster, fleet):
    """Page by id and by start time while 300 other runs are terminated: every workflow
    appears exactly once (status changes do not move a run in either order)."""
    victims = sorted(set(fleet["ids"]["b"]))[::3][:300]

    async def page_all(order: str) -> list[str]:
        async with Client(cluster.address, timeout_s=60.0) as client:
            seen, token = [], b""
            while True:
                items, token = await client.list_workflows(
                    workflow_id_prefix=fleet["tag"] + "-", page_size=250, page_token=token,
                    order_by=order)
                seen += [w["workflow_id"] for w in items]
                await asyncio.sleep(0.01)  # let the terminations interleave with the pages
                if not token:
                    return seen

    async def run():
        terminating = asyncio.create_task(_terminate(cluster.address, victims, concurrency=4))
        by_id, by_start = await asyncio.gather(page_all("workflow_id"), page_all("-start_time"))
        await terminating
        return by_id, by_start

    by_id, by_start = asyncio.run(run())
    fleet["terminated"] |= set(victims)
    assert by_id == fleet["all"]
    assert sorted(by_start) == fleet["all"] and len(by_start) == 5000
    statuses = {w["workflow_id"]: w["status"] for w in listing(
        cluster, "--type", fleet["types"]["b"], "--all", "--page-size", "1000")["workflows"]}
    assert all(statuses[v] == "TERMINATED" for v in victims)


def test_human_list_history_timeline_and_bad_input(cluster, fleet):
    victim = sorted(fleet["terminated"])[0]
    human = ok(coda("workflow", "list", "--prefix", victim, address=cluster.address)).splitlines()
    assert human[0].split()[:2] == ["WORKFLOW", "ID"] and human[1].split()[0] == victim, human
    assert "TERMINATED" in human[1] and human[-1] == "(1 workflows)", human
    timeline = ok(coda("workflow", "history", victim, address=cluster.address)).splitlines()
    assert timeline[0].startswith("run started ") and "events" in timeline[0], timeline
    assert "+    0.000s WorkflowExecutionStarted" in timeline[1], timeline
    assert any("WorkflowExecutionTerminated" in line and "visibility test" in line
               for line in timeline[2:]), timeline
    failed(coda("workflow", "list", "--started-after", "yesterday", address=cluster.address),
           2, "--started-after", "ISO-8601")
    failed(coda("workflow", "list", "--order", "size", address=cluster.address), 2, "--order")
    failed(coda("workflow", "list", "--started-after", "1h", "--started-before", "2h",
                address=cluster.address), 1, "INVALID_ARGUMENT", "start_time_from_ms")
    token = listing(cluster, "--prefix", fleet["tag"], "--page-size", "5")["next_page_token"]
    failed(coda("workflow", "list", "--prefix", fleet["tag"], "--order", "start_time",
                "--page-token", token, address=cluster.address), 1, "INVALID_ARGUMENT",
           "different order")


PENDING_MODULE = '''
import asyncio
import coda


@coda.task(name="vis_stuck")
async def vis_stuck():
    await asyncio.sleep(120)


@coda.task(name="vis_broken", retry=coda.RetryPolicy(initial_interval=60, maximum_attempts=3))
def vis_broken():
    raise RuntimeError("the disk is on fire")


@coda.workflow(name="vis_pending")
async def vis_pending():
    stuck = coda.context.spawn_task(vis_stuck)
    broken = coda.context.spawn_task(vis_broken)
    await coda.context.sleep(3600)
    return await coda.context.await_all([stuck, broken])
'''


def test_describe_pending_and_supervisor_list(cluster, tmp_path):
    module_dir = write_module(tmp_path / "mods", "vis_pending_mod", PENDING_MODULE)
    sup = SupervisorProcess(cluster, "vis_pending_mod", root=str(tmp_path / "sup"),
                            module_dir=module_dir, workers=1, build_id="vis-build-1").start()
    try:
        sup.wait_connected()
        wid = uid("vis-pending")
        ok(coda("workflow", "start", "vis_pending", "--id", wid, address=cluster.address))

        def pending():
            d = as_json(coda("--json", "workflow", "describe", wid, address=cluster.address))
            states = {t["task_type"]: t for t in d["pending_tasks"]}
            ready = (states.get("vis_stuck", {}).get("state") == "RUNNING"
                     and states.get("vis_broken", {}).get("state") == "BACKOFF"
                     and d["pending_timers"])
            return d if ready else None

        d = wait_for(pending, 60, "a running task, a task in backoff and a timer")
        stuck = next(t for t in d["pending_tasks"] if t["task_type"] == "vis_stuck")
        broken = next(t for t in d["pending_tasks"] if t["task_type"] == "vis_broken")
        assert stuck["supervisor_id"] == sup.supervisor_id and stuck["attempt"] == 1
        assert "the disk is on fire" in broken["last_failure"], broken
        assert broken["retry_time_ms"] > time.time() * 1000 + 30_000, broken
        (timer,) = d["pending_timers"]
        assert 3500_000 < timer["fire_time_ms"] - d["start_time_ms"] < 3700_000, timer
        human = ok(coda("workflow", "describe", wid, address=cluster.address))
        assert "pending tasks (2):" in human and "last failure: RuntimeError" in human, human
        assert "pending timers (1):" in human, human

        sups = as_json(coda("--json", "supervisor", "list", address=cluster.address))
        (mine,) = [s for s in sups["supervisors"] if s["supervisor_id"] == sup.supervisor_id]
        assert mine["build_id"] == "vis-build-1" and mine["shards"] == list(range(SHARDS))
        assert mine["workflow_types"] == ["vis_pending"], mine
        assert sorted(mine["task_types"]) == ["vis_broken", "vis_stuck"], mine
        assert sups["unanswered_shards"] == []
        human = ok(coda("supervisor", "list", address=cluster.address))
        assert sup.supervisor_id in human and "vis_broken" in human, human
        ok(coda("workflow", "terminate", wid, address=cluster.address))
    finally:
        sup.stop()
