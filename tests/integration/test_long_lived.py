"""Long-lived workflows (#9) on a real cluster: continue-as-new, patching across a code
deploy, and the replay helper on a history exported from a real run.

1. A workflow that continues as new 300 times: the client's handle (of the first run)
   follows it to the last run's result; each run starts with an empty history; the
   shard keeps at most closed_runs_per_workflow_max closed runs of the id (read from
   LMDB after the cluster stops).
2. A deploy, v1 and v2 supervisors side by side: runs pinned to v1 finish on v1; an
   upgradable run moves to v2 and `patched("sms")` replays its old step the old way; new
   runs start on v2; a pinned run whose build is gone waits, visible in describe and in
   `coda workflow list --build-id v1`, until a v1 supervisor is back. The history of a v1
   run, exported with `coda workflow history --json`, replays on v1 and v2 and raises
   NonDeterminismError on v3 (the SMS without the patch) through coda.testing.replay.
3. A run past the cluster's history limit is told before and fails clearly.
"""

from __future__ import annotations

import importlib.util
import uuid

import pytest

import coda
from coda.client.workflow_runtime import NonDeterminismError
from coda.flow import limits, model
from cli_helpers import as_json, coda as coda_cli, ok
from exec_helpers import wait_for, write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

ITERATIONS = 300
HISTORY_EVENTS_MAX = 200   # the cluster's setting here: small, so the limit is reached

CHATTY = '''
import coda


@coda.task(name="x_inc")
def x_inc(n):
    return n + 1


@coda.workflow(name="x_chatty")
async def x_chatty(n):
    while True:
        n = await coda.context.spawn_task(x_inc, args={"n": n})
'''

LOOP = '''
import coda


@coda.workflow(name="x_loop")
async def x_loop(i, until):
    coda.context.set_state("i", i)
    if i < until:
        coda.context.continue_as_new({"i": i + 1, "until": until})
    return {"i": i}
'''

V1 = '''
import coda


@coda.task(name="send_email")
def send_email():
    return "email"


@coda.task(name="send_sms")
def send_sms():
    return "sms"


async def notify():
    sent = await coda.context.spawn_task(send_email)
    await coda.context.wait_signal("go")
    return sent


x_notify = coda.workflow(name="x_notify")(notify)


@coda.workflow(name="x_notify_up", versioning="auto_upgrade")
async def x_notify_up():
    return await notify()
'''

V2 = V1.replace('''    sent = await coda.context.spawn_task(send_email)
    await coda.context.wait_signal("go")
    return sent''', '''    if coda.context.patched("sms"):
        sent = await coda.context.spawn_task(send_sms)
    else:
        sent = await coda.context.spawn_task(send_email)
    await coda.context.wait_signal("go")
    return sent + "/v2"''')

V3 = V1.replace('''    sent = await coda.context.spawn_task(send_email)''', '''    sent = await coda.context.spawn_task(send_sms)''')

assert V1 != V2 != V3 != V1


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def load(directory, name: str):
    """Import a test module from its file (the test process replays its workflow)."""
    spec = importlib.util.spec_from_file_location(f"_{name}_{uuid.uuid4().hex}",
                                                  f"{directory}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    cluster = Cluster(str(root / "cluster"), shards=2,
                      settings={"history_events_per_run_max": HISTORY_EVENTS_MAX})
    try:
        cluster.start()
        cluster.wait_leaders()
        yield cluster, root
    finally:
        cluster.close()


def supervisor(cluster, root, name: str, source: str,
               build_id: str | None = None) -> SupervisorProcess:
    module_dir = write_module(root / name, name.split("-")[0], source)
    sup = SupervisorProcess(cluster, name.split("-")[0], root=str(root / f"{name}-run"),
                            workers=1, module_dir=module_dir, build_id=build_id)
    sup.start()
    sup.wait_connected()
    return sup


def test_continue_as_new_many_times_follows_to_the_last_run_with_bounded_storage(cluster):
    cluster, root = cluster
    sup = supervisor(cluster, root, "loopflows", LOOP)
    try:
        with cluster.client(timeout_s=60.0) as client:
            wid = new_id("loop")
            handle = client.start_workflow("x_loop", {"i": 0, "until": ITERATIONS},
                                           workflow_id=wid)
            assert handle.result(timeout=240) == {"i": ITERATIONS}
            # The first run is long gone (only the last closed runs are kept); a handle
            # of it still reaches the end of the chain.
            with pytest.raises(coda.errors.NotFound):
                client.describe_workflow(wid, handle.run_id)
            assert client.get_workflow_handle(wid, handle.run_id).result(timeout=30) == {
                "i": ITERATIONS}
            last = client.describe_workflow(wid)
            assert last["status"] == model.COMPLETED and last["continued_from_run_id"]
            assert last["history_length"] <= 5  # each run starts with an empty history
            assert [e["type"] for e in client.workflow_history(wid)][0] == \
                "WorkflowExecutionStarted"
            assert client.get_workflow_state(wid, "i") == ITERATIONS
            kept = last["continued_from_run_id"]
            own_end = client.get_workflow_handle(wid, kept).wait_closed(
                timeout=5, follow_runs=False)  # not following: this run's own end
            assert own_end["status"] == model.CONTINUED_AS_NEW
            assert own_end["continued_as_run_id"] == last["run_id"]
    finally:
        sup.close()
    cluster.stop(0)
    try:
        stored = cluster.stored_runs(0)[wid]
    finally:
        cluster.start(0)
        cluster.wait_leaders()
    assert len(stored["closed_runs"]) == limits.closed_runs_per_workflow_max
    assert len(stored["history_runs"]) == limits.closed_runs_per_workflow_max + 1


def test_a_deploy_side_by_side_pins_old_runs_upgrades_patched_ones_and_new_runs_use_new_code(
        cluster, tmp_path):
    """v1 and v2 supervisors connected at once: runs pinned to v1 finish on v1 and new
    runs start on v2. Once v1 stops, an upgradable run moves to v2 and replays its old
    step on the old branch (patched). A pinned run whose build is gone waits, visible in describe
    and in `list --build-id`, until a v1 supervisor is back."""
    cluster, root = cluster
    v1 = supervisor(cluster, root, "notify-v1", V1, build_id="v1")
    v2 = v1b = None
    try:
        with cluster.client(timeout_s=60.0) as client:
            pinned = [client.start_workflow("x_notify", workflow_id=new_id("pinned"))
                      for _ in range(3)]
            upgradable = client.start_workflow("x_notify_up", workflow_id=new_id("up"))
            for handle in pinned + [upgradable]:  # each sent its email, waits for "go"
                wait_for(lambda h=handle: any(e["type"] == "TaskCompleted"
                                              for e in h.history()), 30, "the email sent")
            assert {h.describe()["build_id"] for h in pinned} == {"v1"}
            exported = tmp_path / "old.json"
            exported.write_text(ok(coda_cli("workflow", "history", pinned[0].workflow_id,
                                            "--json", address=cluster.address)))
            v2 = supervisor(cluster, root, "notify-v2", V2, build_id="v2")
            new = client.start_workflow("x_notify", workflow_id=new_id("new"))
            assert new.describe()["build_id"] == "v2"
            for handle in pinned[:2] + [new]:
                handle.signal("go")
            assert [h.result(timeout=60) for h in pinned[:2]] == ["email", "email"]  # on v1
            assert new.result(timeout=60) == "sms/v2"
            v1.stop()  # from here only v2 runs: the upgradable run moves to it
            upgradable.signal("go")
            assert upgradable.result(timeout=60) == "email/v2"  # v2, the old branch
            assert [e["patch_id"] for e in new.history() if e["type"] == "MarkerRecorded"] \
                == ["sms"]
            assert not any(e["type"] == "MarkerRecorded" for e in upgradable.history())
            waiting = pinned[2]  # the last v1 run: no supervisor of its build now
            waiting.signal("go")
            wait_for(lambda: waiting.describe()["queued_on"] == "wf/x_notify@v1", 30,
                     "the pinned run queued for its build")
            listed = as_json(coda_cli("--json", "workflow", "list", "--build-id", "v1",
                                      "--status", "RUNNING", address=cluster.address))
            assert [w["workflow_id"] for w in listed["workflows"]] == [waiting.workflow_id]
            assert waiting.describe()["status"] == "RUNNING"
            v1b = supervisor(cluster, root, "notify-v1-again", V1, build_id="v1")
            assert waiting.result(timeout=60) == "email"
    finally:
        for sup in (v1, v2, v1b):
            if sup is not None:
                sup.close()
    dirs = {name: write_module(tmp_path / name, name, src)
            for name, src in (("nv1", V1), ("nv2", V2), ("nv3", V3))}
    for name in ("nv1", "nv2"):
        result = coda.testing.replay(load(dirs[name], name).x_notify, str(exported))
        assert result.commands == [], (name, result)
    with pytest.raises(NonDeterminismError, match="send_sms.*send_email"):
        coda.testing.replay(load(dirs["nv3"], "nv3").x_notify, str(exported))


def test_a_run_past_its_history_limit_fails_clearly_and_was_told_before(cluster):
    """A workflow that never continues as new: describe suggests it from 80% of the
    cluster's limit, and at the limit the run fails HistoryLimitExceeded (a continue-as-
    new loop under the same limit, above, never gets there)."""
    cluster, root = cluster
    sup = supervisor(cluster, root, "chattyflows", CHATTY)
    try:
        with cluster.client(timeout_s=60.0) as client:
            handle = client.start_workflow("x_chatty", {"n": 0}, workflow_id=new_id("chatty"))
            suggested = wait_for(lambda: (lambda d: d if d["continue_as_new_suggested"]
                                          else None)(handle.describe()), 60,
                                 "continue-as-new suggested", poll_s=0.05)
            assert suggested["history_length"] >= HISTORY_EVENTS_MAX * 8 // 10
            with pytest.raises(coda.WorkflowFailedError, match="HistoryLimitExceeded"):
                handle.result(timeout=60)
            closed = handle.describe()
            assert f"the limit is {HISTORY_EVENTS_MAX} events" in closed["failure"]
            assert HISTORY_EVENTS_MAX <= closed["history_length"] <= HISTORY_EVENTS_MAX + 5
            with pytest.raises(coda.errors.NotFound):  # closed: no signals either
                handle.signal("late")
    finally:
        sup.close()
    shard = str(cluster.shard_of(handle.workflow_id))  # counted by whichever node led it
    assert sum(cluster.metric(i, "coda_shard_history_warnings_total", shard=shard)
               for i in range(3)) >= 1
