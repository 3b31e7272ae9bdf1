"""Many big items assigned at once reach the supervisor (flow.dispatches.split_by_bytes).

Twelve tasks with 1.9 MB args each (under the default 2 MiB payload limit) wait in their
queue until a supervisor serving their type connects; the dispatch loop then assigns
them in one `assign`. Its items used to go as one `dispatches` message past gRPC's
message limit ("Sent message larger than max (15200665 vs. 8470528)"): the stream
broke, the supervisor's hello re-queued them, the next assign grouped them again, and
after 40 s four of twelve had run. Now they go as messages of at most
limits.dispatch_message_bytes_max each.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import coda
from exec_helpers import write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

WORKFLOWS = '''
import coda


@coda.workflow(name="big_one")
async def big_one(i):
    return await coda.context.spawn_task("big_echo", args={"blob": "x" * 1_900_000})
'''

TASKS = '''
import coda


@coda.task(name="big_echo")
def big_echo(blob):
    return len(blob)
'''


def test_big_items_assigned_together_all_reach_the_supervisor(tmp_path):
    cluster = Cluster(str(tmp_path / "cluster"), shards=1)
    workflows = SupervisorProcess(
        cluster, "big_workflows", root=str(tmp_path / "workflows"), workers=1,
        module_dir=write_module(tmp_path / "wf", "big_workflows", WORKFLOWS))

    def tasks(name: str) -> SupervisorProcess:
        return SupervisorProcess(cluster, "big_tasks", root=str(tmp_path / name), workers=2,
                                 module_dir=write_module(tmp_path / "t", "big_tasks", TASKS))
    declared = served = None
    try:
        cluster.start()
        cluster.wait_leaders()
        declared = tasks("declare").start()  # the task type is known to the shard ...
        declared.wait_connected()
        declared.close()                     # ... and nobody serves it for now
        workflows.start()
        workflows.wait_connected()

        async def start_all(client) -> list:
            return await asyncio.gather(*(
                client.start_workflow("big_one", {"i": i}, workflow_id=f"big-{i}")
                for i in range(12)))

        async def queued(client) -> int:
            return sum([1 for i in range(12)
                        if (await client.describe_workflow(f"big-{i}"))["pending_tasks"]])

        async def run() -> list:
            async with coda.Client(cluster.address, timeout_s=60) as client:
                handles = await start_all(client)
                deadline = time.monotonic() + 30
                while await queued(client) < 12:  # every task waits in its queue
                    assert time.monotonic() < deadline, "the tasks were never scheduled"
                    await asyncio.sleep(0.1)
                await asyncio.to_thread(lambda: served_box.append(tasks("serve").start()))
                return await asyncio.wait_for(
                    asyncio.gather(*(h.result() for h in handles)), 60)

        served_box: list = []
        try:
            assert asyncio.run(run()) == [1_900_000] * 12
        finally:
            served = served_box[0] if served_box else None
        log = served.read_log()
        assert "larger than max" not in log, log[-3000:]
    finally:
        for sup in (workflows, declared, served):
            if sup is not None:
                sup.close()
        cluster.close()


RESULTS = '''
import coda


@coda.workflow(name="big_result")
async def big_result(i):
    return "y" * 1_900_000
'''


def test_runs_with_big_results_are_listed_in_pages_that_fit(tmp_path):
    """ListWorkflows items carry their results: six of 1.9 MB on two shards used to make
    one answer past gRPC's message limit. Pages now stop at limits.list_page_bytes_max
    (split over the shards, cut again where they merge); every run is listed once."""
    cluster = Cluster(str(tmp_path / "cluster"), shards=2)
    supervisor = SupervisorProcess(
        cluster, "big_results", root=str(tmp_path / "supervisor"), workers=1,
        module_dir=write_module(tmp_path / "flows", "big_results", RESULTS))
    try:
        cluster.start()
        cluster.wait_leaders()
        supervisor.start()
        supervisor.wait_connected()

        async def run() -> tuple[list, int]:
            async with coda.Client(cluster.address, timeout_s=60) as client:
                for i in range(6):
                    await client.execute_workflow("big_result", {"i": i},
                                                  workflow_id=f"listed-{i}", timeout=60)
                pages, token, listed = 0, b"", []
                while True:
                    items, token = await client.list_workflows(page_token=token,
                                                               page_size=100)
                    pages += 1
                    listed += items
                    if not token:
                        return listed, pages

        listed, pages = asyncio.run(run())
        assert sorted(w["workflow_id"] for w in listed) == [f"listed-{i}" for i in range(6)]
        assert pages >= 3  # 11.4 MB of results: not one 4 MiB page
        assert all(coda.client.client.workflow_result(w) == "y" * 1_900_000 for w in listed)
    finally:
        supervisor.close()
        cluster.close()
