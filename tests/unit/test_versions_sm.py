"""Worker versions in the state machine (#9): runs pinned to the build they started on,
new runs on the newest build, upgradable types on any, list by build id."""

from __future__ import annotations

import pytest

from coda.flow import commands, model, queries
from coda.storage import keys
from coda.flow.dispatches import dispatch_of
from coda.storage import codec
from test_execution_sm import Sim


class VersionSim(Sim):
    def hello(self, sid, build, time_ms, upgradable=()):
        self.time_ms = time_ms
        return self.apply(commands.register_supervisor(
            time_ms=time_ms, supervisor_id=sid, build_id=build,
            workflow_types=["twice", "careful"], task_types=["inc"], running=[],
            upgradable_workflow_types=list(upgradable)))

    def assign_from(self, sid, queue) -> list[dict]:
        items = [q for q in self.queued() if q[0] == queue]
        assigned = self.apply(commands.assign(time_ms=self.time_ms, supervisor_id=sid,
                                              items=items))["assigned"]
        return [dict(item, dispatch=self.read(lambda txn, i=item: dispatch_of(txn, i)))
                for item in assigned]


@pytest.fixture
def sim(tmp_path):
    s = VersionSim(tmp_path / "shard")
    yield s
    s.store.close()


def test_runs_stay_on_their_build_and_new_runs_go_to_the_newest(sim):
    sim.hello("old", "v1", 1000)
    sim.start("a", "twice", {"n": 1})
    assert sim.record("a")["build_id"] == "v1"
    assert sim.record("a")["queue"] == keys.workflow_queue_name("twice", "v1") == "wf/twice@v1"
    sim.hello("new", "v2", 2000)
    sim.hello("old", "v1", 3000)  # an old supervisor reconnecting: v2 stays the newest
    sim.start("b", "twice", {"n": 1})
    assert sim.record("b")["build_id"] == "v2"
    # A supervisor of another build can't take a pinned run, even if asked to.
    assert sim.assign_from("new", "wf/twice@v1") == []
    assert [i["workflow_id"] for i in sim.assign_from("old", "wf/twice@v1")] == ["a"]
    assert [i["workflow_id"] for i in sim.assign_from("new", "wf/twice@v2")] == ["b"]
    page = sim.read(lambda txn: queries.list_page(txn, after="", statuses=(model.RUNNING,),
                                                  types=(), page_size=10, builds=("v1",)))
    assert [r["workflow_id"] for r in page["items"]] == ["a"]


def test_upgradable_types_and_runs_from_before_any_build(sim):
    sim.hello("s", "", 1000)  # unversioned: pins nothing
    sim.start("u", "careful", {"n": 1})
    assert sim.record("u")["build_id"] is None and sim.record("u")["queue"] == "wf/careful"
    sim.hello("s2", "v1", 2000, upgradable=["careful"])
    [item] = sim.assign_from("s2", "wf/careful")
    assert sim.record("u")["build_id"] is None  # upgradable: never pinned
    sim.start("p", "twice", {"n": 1})
    assert sim.record("p")["build_id"] == "v1"
    sim.start("u2", "careful", {"n": 1})  # upgradable: never pinned, any build takes it
    assert sim.record("u2")["queue"] == "wf/careful" and sim.record("u2")["build_id"] is None
    sim.hello("s3", "v2", 3000, upgradable=["careful"])
    [item] = sim.assign_from("s2", "wf/careful")  # v1 takes its first workflow task
    sim.complete(item, {"commands": sim.run_workflow_task(item)})
    [task] = sim.assign_from("s2", "task/inc")
    sim.complete(task, {"result": codec.pack(2)})
    assert sim.record("u2")["queue"] == "wf/careful"   # the next one: still any build's
    [item] = sim.assign_from("s3", "wf/careful")       # here v2 takes it
    assert item["workflow_id"] == "u2" and sim.record("u2")["build_id"] is None


def test_a_run_started_before_builds_is_pinned_where_it_first_runs(sim):
    sim.hello("s", "", 1000)
    sim.start("early", "twice", {"n": 1})
    assert sim.record("early")["build_id"] is None
    sim.hello("v1sup", "v1", 2000)
    [item] = sim.assign_from("v1sup", "wf/twice")
    assert sim.record("early")["build_id"] == "v1"
    assert sim.record("early")["queue"] == "wf/twice@v1"
