"""Schedules on a real cluster: three `coda-flow serve` nodes, a real supervisor with real
workers, schedules every few seconds and workflows that outlast them.

What is judged, and how: every run a schedule starts has the workflow id
"<schedule id>-<nominal time, UTC ISO>", so the runs of a schedule (found by listing) tell
which nominal times ran, when each started and closed, and how it closed. The tests
derive the expected times from the schedule's spec and compare.
"""

from __future__ import annotations

import datetime
import time

import pytest

from coda.errors import InvalidArgument, NotFound
from coda.flow import model
from exec_helpers import LOG_ENV, RECORDER, read_records, wait_for, write_module
from harness import Cluster, SupervisorProcess

pytestmark = pytest.mark.cluster

LEASE_MS = 2000
INTERVAL_S = 2
# How late a run may start after its nominal time on this (loaded, 2-core) machine: the
# timer loop, one Raft commit on the schedule's shard, one on the run's, one dispatch.
START_SLACK_MS = 2000

SCHED_FLOWS = RECORDER + '''
import coda


@coda.task(name="s_mark")
def s_mark():
    return record("ran", run=current_task().run_id).run_id


@coda.workflow(name="s_long")
async def s_long(seconds):
    await coda.context.sleep(seconds)
    return "slept"


@coda.workflow(name="s_quick")
async def s_quick():
    return await coda.context.spawn_task(s_mark)


@coda.workflow(name="s_fails", retry=coda.RetryPolicy(initial_interval=0.5,
                                                    maximum_interval=0.5))
async def s_fails():
    raise RuntimeError("always")
'''


class Env:
    def __init__(self, root, cluster, supervisor, log_path):
        self.root = root
        self.cluster = cluster
        self.supervisor = supervisor
        self.log_path = log_path
        self.client = cluster.client(timeout_s=60.0)

    def runs(self, schedule_id: str) -> list[dict]:
        """The schedule's runs (current runs of ids with its prefix), by nominal time."""
        prefix = schedule_id + "-"
        found = [dict(w, nominal_ms=nominal_ms(w["workflow_id"], prefix))
                 for w in self.client.list_all() if w["workflow_id"].startswith(prefix)]
        return sorted(found, key=lambda w: w["nominal_ms"])

    def wait_closed(self, schedule_id: str, timeout_s: float = 30.0) -> list[dict]:
        return wait_for(lambda: (lambda runs: runs if all(
            r["status"] != model.RUNNING for r in runs) else None)(self.runs(schedule_id)),
            timeout_s, f"every run of {schedule_id} closed", poll_s=0.5)


def nominal_ms(workflow_id: str, prefix: str) -> int:
    moment = datetime.datetime.fromisoformat(workflow_id[len(prefix):].replace("Z", "+00:00"))
    return int(round(moment.timestamp() * 1000))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    cluster = Cluster(str(root / "cluster"), shards=2, supervisor_lease_ms=LEASE_MS)
    supervisor = env = None
    try:
        cluster.start()
        cluster.wait_leaders()
        log_path = str(root / "executions.jsonl")
        module_dir = write_module(root / "flows", "sched_flows", SCHED_FLOWS)
        supervisor = SupervisorProcess(cluster, "sched_flows", root=str(root / "supervisor"),
                                       workers=2, module_dir=module_dir,
                                       env={LOG_ENV: log_path})
        supervisor.start()
        supervisor.wait_connected()
        env = Env(root, cluster, supervisor, log_path)
        yield env
    finally:
        if env is not None:
            env.client.close()
        if supervisor is not None:
            supervisor.close()
        cluster.close()


def overlaps(a: dict, b: dict) -> bool:
    return a["start_time_ms"] < b["close_time_ms"] and b["start_time_ms"] < a["close_time_ms"]


def consecutive(runs: list[dict]) -> bool:
    times = [r["nominal_ms"] for r in runs]
    return times == list(range(times[0], times[0] + len(times) * INTERVAL_S * 1000,
                               INTERVAL_S * 1000))


# --- overlap policies --------------------------------------------------------------------------

POLICIES = ("SKIP", "BUFFER_ONE", "BUFFER_ALL", "CANCEL_OTHER", "TERMINATE_OTHER", "ALLOW_ALL")
RUN_S = 5           # each run sleeps this long: two and a half intervals
OBSERVE_S = 11


def test_each_overlap_policy(env):
    """All six at once: a schedule every 2 s per policy, runs that sleep 5 s."""
    handles = {p: env.client.create_schedule(f"ov-{p.lower()}", "s_long", {"seconds": RUN_S},
                                             interval=INTERVAL_S, overlap=p)
               for p in POLICIES}
    time.sleep(OBSERVE_S)
    described = {p: h.describe() for p, h in handles.items()}
    for handle in handles.values():
        handle.delete()  # no more starts, buffered ones included; runs go on
    runs = {p: env.wait_closed(f"ov-{p.lower()}") for p in POLICIES}
    for policy in POLICIES:
        assert len(runs[policy]) >= 2, (policy, runs[policy], described[policy])
        CHECKS[policy](runs[policy], described[policy])


def _check_skip(runs, info):
    assert not any(overlaps(a, b) for a, b in zip(runs, runs[1:])), runs
    assert info["counts"]["skipped"] >= 2, info
    for run in runs:  # a time is started on time or not at all
        assert run["start_time_ms"] - run["nominal_ms"] < START_SLACK_MS, run
    assert all(r["status"] == model.COMPLETED for r in runs), runs


def _check_buffer_one(runs, info):
    assert not any(overlaps(a, b) for a, b in zip(runs, runs[1:])), runs
    assert info["counts"]["skipped"] >= 1, info  # the buffer holds one time only
    first, second = runs[0], runs[1]
    assert second["nominal_ms"] == first["nominal_ms"] + INTERVAL_S * 1000  # the buffered one
    assert 0 <= second["start_time_ms"] - first["close_time_ms"] < START_SLACK_MS, runs


def _check_buffer_all(runs, info):
    assert not any(overlaps(a, b) for a, b in zip(runs, runs[1:])), runs
    assert info["counts"]["skipped"] == 0, info
    assert len(info["buffered_times_ms"]) >= 2, info
    assert consecutive(runs), [r["nominal_ms"] for r in runs]
    for a, b in zip(runs, runs[1:]):  # each started as the one before closed
        assert 0 <= b["start_time_ms"] - a["close_time_ms"] < START_SLACK_MS, (a, b)


def _check_cancel_other(runs, info):
    assert consecutive(runs), [r["nominal_ms"] for r in runs]
    assert [r["status"] for r in runs[:-1]] == [model.CANCELLED] * (len(runs) - 1), runs
    for a, b in zip(runs, runs[1:]):  # cancelled when the next time came; started after
        assert 0 <= a["close_time_ms"] - b["nominal_ms"] < START_SLACK_MS, (a, b)
        assert b["start_time_ms"] >= a["close_time_ms"], (a, b)


def _check_terminate_other(runs, info):
    assert consecutive(runs), [r["nominal_ms"] for r in runs]
    assert [r["status"] for r in runs[:-1]] == [model.TERMINATED] * (len(runs) - 1), runs
    for a, b in zip(runs, runs[1:]):
        assert 0 <= a["close_time_ms"] - b["nominal_ms"] < START_SLACK_MS, (a, b)
        assert b["start_time_ms"] - b["nominal_ms"] < START_SLACK_MS, b


def _check_allow_all(runs, info):
    assert consecutive(runs), [r["nominal_ms"] for r in runs]
    assert all(r["start_time_ms"] - r["nominal_ms"] < START_SLACK_MS for r in runs), runs
    assert any(overlaps(a, b) for a, b in zip(runs, runs[1:])), runs
    assert all(r["status"] == model.COMPLETED for r in runs), runs
    assert info["counts"]["skipped"] == 0 and len(info["running"]) >= 2, info


CHECKS = {"SKIP": _check_skip, "BUFFER_ONE": _check_buffer_one,
          "BUFFER_ALL": _check_buffer_all, "CANCEL_OTHER": _check_cancel_other,
          "TERMINATE_OTHER": _check_terminate_other, "ALLOW_ALL": _check_allow_all}


# --- the seed's rule: a failing run's retries stop when the next time is due ---------------------

def test_a_failing_run_stops_retrying_when_the_next_run_is_due(env):
    handle = env.client.create_schedule("fails", "s_fails", interval=3)
    wait_for(lambda: len(env.runs("fails")) >= 3, 20, "three runs of the failing schedule",
             poll_s=0.5)
    handle.delete()
    runs = env.wait_closed("fails")
    for run, following in zip(runs, runs[1:]):
        assert run["status"] == model.FAILED, run
        assert run["attempt"] >= 2, run  # it did retry while there was time
        assert "not retried: the schedule's next run is due" in run["failure"], run
        assert run["close_time_ms"] <= following["nominal_ms"], (run, following)
        assert following["start_time_ms"] - following["nominal_ms"] < START_SLACK_MS, following
    assert runs[1]["nominal_ms"] - runs[0]["nominal_ms"] == 3000  # the next ran on time


# --- no nominal time twice (or never) across leader kills ---------------------------------------

def test_no_nominal_time_runs_twice_across_leader_kills(env):
    cluster = env.cluster
    handle = env.client.create_schedule("kills", "s_quick", interval=1, overlap="ALLOW_ALL")
    shard = cluster.shard_of("kills")
    for _ in range(2):
        time.sleep(3)
        victim = cluster.leader_node(shard)
        cluster.kill(victim)
        time.sleep(2)
        cluster.start(victim)
        cluster.wait_leaders()
    time.sleep(3)
    info = handle.describe()
    handle.delete()
    runs = env.wait_closed("kills", timeout_s=60)
    times = [r["nominal_ms"] for r in runs]
    assert times == list(range(times[0], times[-1] + 1000, 1000)), times  # none lost, none twice
    assert len(runs) >= 10 and info["counts"]["missed"] == 0, info
    assert all(r["status"] == model.COMPLETED for r in runs), runs
    # One run per workflow id: the task of each ran under that run only.
    run_ids = {}
    for rec in read_records(env.log_path):
        if rec["wid"].startswith("kills-"):
            run_ids.setdefault(rec["wid"], set()).add(rec["run"])
    current = {r["workflow_id"]: r["run_id"] for r in runs}
    assert {wid: ids for wid, ids in run_ids.items() if ids != {current[wid]}} == {}
    assert set(run_ids) == set(current)


# --- catch-up after downtime -------------------------------------------------------------------

def test_catch_up_after_cluster_downtime(env):
    cluster = env.cluster
    window_ms = 5000
    handle = env.client.create_schedule("catchup", "s_long", {"seconds": 0}, interval=1,
                                        overlap="ALLOW_ALL", catchup_window=window_ms / 1000)
    wait_for(lambda: env.runs("catchup"), 10, "a first run")
    cluster.kill_all()
    down_s = time.time()
    time.sleep(10)
    cluster.start()
    cluster.wait_leaders()
    info = wait_for(lambda: (lambda i: i if any(a["action"] == "missed" for a in i["recent"])
                             else None)(handle.describe()), 30, "the missed times recorded")
    handle.pause("checked")
    missed = next(a for a in info["recent"] if a["action"] == "missed")
    fired_ms = missed["at_ms"]  # the first firing after the restart
    assert fired_ms > down_s * 1000
    started = {a["nominal_time_ms"]: a["at_ms"] for a in info["recent"]
               if a["action"] == "started"}
    before_kill = [t for t, at_ms in started.items() if at_ms < fired_ms]
    due = range(max(before_kill) + 1000, fired_ms + 1, 1000)  # every time the firing saw
    inside = {t for t in due if fired_ms - t <= window_ms}
    outside = {t for t in due if fired_ms - t > window_ms}
    assert len(outside) >= 3 and inside, (fired_ms, list(due))
    assert {t for t, at_ms in started.items() if at_ms == fired_ms} == inside
    ran = {r["nominal_ms"] for r in env.wait_closed("catchup")}
    assert inside <= ran and not (outside & ran), (sorted(inside), sorted(outside), sorted(ran))
    assert missed["nominal_time_ms"] == min(outside)
    assert info["counts"]["missed"] == 1


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, field, words", [
    ({"cron": "61 * * * *"}, "cron", "bad cron expression"),
    ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"interval": 5, "overlap": "SOMETIMES"}, "overlap", "unknown overlap policy"),
])
def test_bad_schedules_get_clear_errors(env, spec, field, words):
    with pytest.raises(InvalidArgument) as caught:
        env.client.create_schedule("bad", "s_quick", **spec)
    assert words in caught.value.message and caught.value.details.get("field") == field


def test_a_bad_overlap_reaches_the_server_as_a_clear_error(env):
    """The SDK checks overlap names itself; the server checks them too (other clients)."""
    from coda.api import flow_pb2 as pb
    with pytest.raises(InvalidArgument) as caught:
        env.client._run(env.client._client._call("CreateSchedule", pb.CreateScheduleRequest(
            schedule_id="bad-overlap", spec=pb.ScheduleSpec(interval_ms=5000),
            action=pb.ScheduleAction(workflow_type="s_quick"),
            policy=pb.SchedulePolicy(overlap="SOMETIMES")), retry_indeterminate=False))
    assert "unknown overlap policy 'SOMETIMES'" in caught.value.message
    with pytest.raises(NotFound):
        env.client.get_schedule_handle("bad-overlap").describe()
