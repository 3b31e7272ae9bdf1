"""A workflow's life from the `coda` CLI, with a real supervisor running it on a real
three-node cluster: start, result (a value; a failure and a cancellation as exit 1 with
the reason), cancel (the workflow's cleanup runs), describe after each, and the
supervisor's graceful stop (SIGTERM: exit 0, its lease handed back). The visibility
commands have their own module (test_visibility_cli.py); schedules, signals, state and
broadcasts theirs."""

from __future__ import annotations

import pytest

from cli_helpers import as_json, coda, failed, module_cluster, nodes_survive, ok, uid
from exec_helpers import wait_for, write_module
from harness import SupervisorProcess

pytestmark = pytest.mark.cluster

MODULE = '''
import asyncio
import coda


@coda.task(name="life_double")
def life_double(x):
    return 2 * x


@coda.task(name="life_block")
async def life_block():
    await asyncio.sleep(120)


@coda.task(name="life_cleanup")
def life_cleanup():
    return "cleaned"


@coda.workflow(name="life_echo")
async def life_echo(x):
    return {"doubled": await coda.context.spawn_task(life_double, args={"x": x})}


@coda.workflow(name="life_fail", retry=coda.RetryPolicy(maximum_attempts=1))
async def life_fail():
    raise ValueError("no such order 42")


@coda.workflow(name="life_wait", retry=coda.RetryPolicy(maximum_attempts=1))
async def life_wait():
    try:
        await coda.context.spawn_task(life_block)
    except asyncio.CancelledError:
        await coda.context.spawn_task(life_cleanup)
        raise
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "life", 2)


@pytest.fixture(autouse=True)
def _nodes_survive(request):
    yield from nodes_survive(request)


@pytest.fixture(scope="module")
def supervisor(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("life-sup")
    module_dir = write_module(root / "mods", "life_mod", MODULE)
    sup = SupervisorProcess(cluster, "life_mod", root=str(root), module_dir=module_dir,
                            workers=1).start()
    try:
        sup.wait_connected()
        yield sup
    finally:
        sup.close()


def test_start_result_and_describe(cluster, supervisor):
    wid = uid("life-echo")
    started = as_json(coda("--json", "workflow", "start", "life_echo", "--id", wid,
                           "--args", '{"x": 21}', address=cluster.address))
    assert started["workflow_id"] == wid and started["run_id"]
    assert ok(coda("workflow", "result", wid, "--timeout", "60",
                   address=cluster.address)).strip() == '{"doubled":42}'
    info = as_json(coda("--json", "workflow", "describe", wid, address=cluster.address))
    assert info["status"] == "COMPLETED" and info["result"] == {"doubled": 42}, info
    assert info["pending_tasks"] == [] and info["open_tasks"] == 0, info


def test_a_failed_run_is_exit_1_with_its_failure(cluster, supervisor):
    wid = uid("life-fail")
    ok(coda("workflow", "start", "life_fail", "--id", wid, address=cluster.address))
    failed(coda("workflow", "result", wid, "--timeout", "60", address=cluster.address), 1,
           "FAILED", "no such order 42")
    human = ok(coda("workflow", "describe", wid, address=cluster.address))
    assert "FAILED" in human and "no such order 42" in human, human


def test_cancel_runs_the_cleanup_and_closes_cancelled(cluster, supervisor):
    wid = uid("life-wait")
    ok(coda("workflow", "start", "life_wait", "--id", wid, address=cluster.address))

    def blocked():
        d = as_json(coda("--json", "workflow", "describe", wid, address=cluster.address))
        return d if any(t["state"] == "RUNNING" for t in d["pending_tasks"]) else None

    wait_for(blocked, 60, "life_block running")
    out = ok(coda("workflow", "cancel", wid, "--reason", "operator said so",
                  address=cluster.address))
    assert out.startswith(f"cancel requested for {wid} run "), out
    failed(coda("workflow", "result", wid, "--timeout", "60", address=cluster.address), 1,
           "CANCELLED")
    history = as_json(coda("--json", "workflow", "history", wid, address=cluster.address))
    completed = [e for e in history if e["type"] == "TaskCompleted"]
    assert [e["result"] for e in completed] == ["cleaned"], history
    failed(coda("workflow", "cancel", uid("life-nobody"), address=cluster.address), 1,
           "NOT_FOUND")


def test_supervisor_stops_gracefully_and_leaves_the_list(cluster, tmp_path):
    root = tmp_path / "second"
    module_dir = write_module(root / "mods", "life_mod", MODULE)
    sup = SupervisorProcess(cluster, "life_mod", root=str(root), module_dir=module_dir,
                            workers=1).start()
    try:
        sup.wait_connected()
        listed = as_json(coda("--json", "supervisor", "list", address=cluster.address))
        assert sup.supervisor_id in [s["supervisor_id"] for s in listed["supervisors"]]
        assert sup.stop() == 0
        def gone():
            answer = as_json(coda("--json", "supervisor", "list", address=cluster.address))
            return sup.supervisor_id not in [s["supervisor_id"] for s in answer["supervisors"]]
        wait_for(gone, 30, "the stopped supervisor to leave the list")
    finally:
        sup.close()
