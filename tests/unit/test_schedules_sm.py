"""Schedules in the shard state machine, driven by a scripted leader (test_execution_sm's Sim:
a real LMDB store behind the Applier, the real workflow runtime as the worker). One shard
holds both the schedule and its runs here; the outbox is delivered by the test."""

from __future__ import annotations

import datetime

import pytest

import coda
from coda.flow import commands, model, schedule_spec, sm_schedules
from coda.flow.schedule_service import next_times, schedule_info
from coda.storage import codec, keys
from test_execution_sm import WORKFLOWS, Sim, T0
from coda.client.sdk import definition_of

STEP_MS = 10_000
BASE = (T0 // STEP_MS + 1) * STEP_MS  # the first 10 s boundary after T0


@coda.workflow(name="sched_fails")
async def sched_fails():
    raise RuntimeError("boom")


WORKFLOWS[definition_of(sched_fails).name] = definition_of(sched_fails)


class SchedSim(Sim):
    def schedule_cmd(self, kind, sid="s", **body):
        return self.applier_apply(commands.schedule_command(
            kind, request_id=f"r{self.index}", time_ms=self.time_ms,
            body=dict(body, schedule_id=sid)))

    def applier_apply(self, data) -> dict:
        self.index += 1
        result = self.applier.apply(self.index, data)
        self.applier.commit()
        return result

    def create(self, sid="s", *, overlap="SKIP", wtype="twice", args=None, **extra):
        spec = extra.pop("spec", {"interval_ms": STEP_MS})
        policy = dict({"overlap": overlap}, **extra.pop("policy", {}))
        result = self.schedule_cmd(commands.CREATE_SCHEDULE, sid, spec=spec, policy=policy,
                                   action={"workflow_type": wtype,
                                           "input": codec.pack({"n": 1} if args is None
                                                               else args)}, **extra)
        assert "error" not in result, result
        return result

    def sched(self, sid="s") -> dict:
        return self.read(lambda txn: sm_schedules.load(txn, sid))

    def tick_to(self, time_ms):
        """Advance the clock, fire what is due, deliver the outbox (both ways)."""
        self.time_ms = time_ms
        while self.fire_due() or self.deliver_outbox():
            pass

    def finish(self, wid):
        """Run everything queued until `wid` closes; then deliver its report."""
        for _ in range(10):
            if self.record(wid)["status"] != model.RUNNING:
                break
            self.step()
        while self.deliver_outbox():
            pass
        assert self.record(wid)["status"] != model.RUNNING

    def runs(self) -> list[str]:
        return sorted(self.read(lambda txn: [k.decode() for k, _ in txn.scan(keys.WORKFLOWS)]))

    def actions(self, sid="s") -> list[tuple[str, int]]:
        return [(a["action"], a["nominal_ms"]) for a in self.sched(sid)["recent"]]


@pytest.fixture
def sim(tmp_path):
    s = SchedSim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def wid(nominal_ms, sid="s"):
    return sm_schedules.run_workflow_id(sid, nominal_ms)


def test_an_interval_schedule_starts_one_run_per_nominal_time(sim):
    sim.create()
    assert sim.sched()["next_nominal_ms"] == BASE
    sim.tick_to(BASE - 1)
    assert sim.runs() == []
    sim.tick_to(BASE + 5)
    assert sim.runs() == [wid(BASE)]
    assert wid(BASE) == "s-2023-11-14T22:13:30Z"
    # The same timer fired again, and the start delivered again: still one run.
    assert sim.fire_due() == 0
    from coda.flow import outbox
    entry = {"kind": "start_scheduled", "workflow_id": wid(BASE), "workflow_type": "twice",
             "input": codec.pack({"n": 1}),
             "request_id": "sched-" + keys.digest("s", str(BASE), "1"),
             "schedule": {"schedule_id": "s", "nominal_ms": BASE}, "retry_deadline_ms": 0}
    again = sim.apply(outbox.command_for(entry))  # answered from the request log
    assert again["run_id"] == sim.record(wid(BASE))["run_id"]
    assert sim.runs() == [wid(BASE)] and len(sim.history(wid(BASE))) > 0
    sim.finish(wid(BASE))
    record = sim.sched()
    assert record["running"] == [] and record["counts"]["started"] == 1
    assert record["recent"][-1]["status"] == model.COMPLETED
    sim.tick_to(BASE + STEP_MS)
    assert sim.runs() == [wid(BASE), wid(BASE + STEP_MS)]
    started = sim.history(wid(BASE + STEP_MS))[0]
    assert started["schedule"] == {"schedule_id": "s", "nominal_ms": BASE + STEP_MS}


def test_skip_drops_times_while_a_run_runs(sim):
    sim.create(overlap="SKIP")
    sim.tick_to(BASE)
    sim.tick_to(BASE + STEP_MS)
    assert sim.runs() == [wid(BASE)]
    assert sim.actions()[-1] == ("skipped", BASE + STEP_MS)
    sim.finish(wid(BASE))
    sim.tick_to(BASE + 2 * STEP_MS)
    assert sim.runs() == [wid(BASE), wid(BASE + 2 * STEP_MS)]


def test_buffer_one_keeps_one_time_and_starts_it_when_the_run_closes(sim):
    sim.create(overlap="BUFFER_ONE")
    sim.tick_to(BASE)
    sim.tick_to(BASE + STEP_MS)
    sim.tick_to(BASE + 2 * STEP_MS)
    assert sim.sched()["buffered"] == [{"nominal_ms": BASE + STEP_MS, "source": "schedule"}]
    assert sim.actions()[-1] == ("skipped", BASE + 2 * STEP_MS)
    sim.finish(wid(BASE))
    assert sim.runs() == [wid(BASE), wid(BASE + STEP_MS)]
    assert sim.sched()["buffered"] == []


def test_buffer_all_starts_buffered_times_one_after_another(sim):
    sim.create(overlap="BUFFER_ALL")
    for i in range(4):
        sim.tick_to(BASE + i * STEP_MS)
    assert [b["nominal_ms"] for b in sim.sched()["buffered"]] == [
        BASE + STEP_MS, BASE + 2 * STEP_MS, BASE + 3 * STEP_MS]
    for i in range(3):
        sim.finish(wid(BASE + i * STEP_MS))
        assert sim.runs()[-1] == wid(BASE + (i + 1) * STEP_MS)
        assert len(sim.sched()["running"]) == 1


def test_cancel_other_cancels_the_run_then_starts_the_new_time(sim):
    sim.create(overlap="CANCEL_OTHER", wtype="napper", args={})
    sim.tick_to(BASE)
    sim.step()  # the first run sleeps
    sim.tick_to(BASE + STEP_MS)
    assert sim.record(wid(BASE))["cancel_requested"]
    assert sim.runs() == [wid(BASE)]  # not yet: the cancelled run has not closed
    sim.finish(wid(BASE))
    assert sim.record(wid(BASE))["status"] == model.CANCELLED
    assert sim.runs() == [wid(BASE), wid(BASE + STEP_MS)]


def test_terminate_other_terminates_and_starts_at_once(sim):
    sim.create(overlap="TERMINATE_OTHER")
    sim.tick_to(BASE)
    sim.tick_to(BASE + STEP_MS)
    assert sim.record(wid(BASE))["status"] == model.TERMINATED
    assert sim.runs() == [wid(BASE), wid(BASE + STEP_MS)]
    assert [r["workflow_id"] for r in sim.sched()["running"]] == [wid(BASE + STEP_MS)]


def test_allow_all_runs_overlapping(sim):
    sim.create(overlap="ALLOW_ALL")
    for i in range(3):
        sim.tick_to(BASE + i * STEP_MS)
    assert len(sim.sched()["running"]) == 3
    assert all(sim.record(wid(BASE + i * STEP_MS))["status"] == model.RUNNING
               for i in range(3))


def test_catch_up_runs_times_inside_the_window_and_records_older_ones_missed(sim):
    sim.create(overlap="ALLOW_ALL", policy={"catchup_window_ms": 35_000})
    sim.tick_to(BASE + 100_000)  # "down" for 100 s: times BASE .. BASE+100 s are due
    started = {w for w in sim.runs()}
    inside = {wid(BASE + t) for t in (70_000, 80_000, 90_000, 100_000)}
    assert started == inside
    assert ("missed", BASE) in sim.actions()
    assert sim.sched()["counts"]["missed"] == 1
    assert sim.sched()["next_nominal_ms"] == BASE + 110_000


def test_retries_stop_when_the_next_time_is_due(sim):
    sim.create(wtype="sched_fails", args={})
    sim.tick_to(BASE)
    record = sim.record(wid(BASE))
    assert record["retry_deadline_ms"] == BASE + STEP_MS
    sim.time_ms = BASE + 9_500  # a retry now (1 s backoff) would land after the next time
    sim.step()
    record = sim.record(wid(BASE))
    assert record["status"] == model.FAILED, record
    assert "not retried: the schedule's next run is due" in record["failure"]["message"]
    while sim.deliver_outbox():
        pass
    sim.tick_to(BASE + STEP_MS)
    assert sim.runs() == [wid(BASE), wid(BASE + STEP_MS)]  # the next one starts on time


def test_a_failing_run_retries_before_the_deadline(sim):
    sim.create(wtype="sched_fails", args={})
    sim.tick_to(BASE)
    sim.step()
    record = sim.record(wid(BASE))
    assert record["status"] == model.RUNNING and record["attempt"] == 2


def test_pause_unpause_trigger_and_backfill(sim):
    sim.create(overlap="ALLOW_ALL")
    ok = sim.schedule_cmd(commands.PATCH_SCHEDULE, op="pause", note="maintenance")
    assert "error" not in ok
    sim.tick_to(BASE + 3 * STEP_MS)
    assert sim.runs() == [] and sim.sched()["note"] == "maintenance"
    assert next_times(sim.sched()) == []
    sim.schedule_cmd(commands.PATCH_SCHEDULE, op="trigger")
    sim.tick_to(sim.time_ms)
    assert sim.runs() == [wid(sim.time_ms)]
    sim.schedule_cmd(commands.PATCH_SCHEDULE, op="unpause", note="")
    assert sim.sched()["next_nominal_ms"] == BASE + 4 * STEP_MS  # paused times not caught up
    assert "error" not in sim.schedule_cmd(commands.PATCH_SCHEDULE, op="backfill",
                                           start_time_ms=BASE, end_time_ms=BASE + STEP_MS)
    sim.tick_to(sim.time_ms)
    assert {wid(BASE), wid(BASE + STEP_MS)} <= set(sim.runs())
    # A backfill of a time whose run still runs is skipped; of one that ran, refused by the
    # run's shard (REJECT_DUPLICATE) and shown.
    sim.schedule_cmd(commands.PATCH_SCHEDULE, op="backfill", start_time_ms=BASE,
                     end_time_ms=BASE)
    assert sim.sched()["recent"][-1]["detail"] == f"run {wid(BASE)} is already running"
    sim.finish(wid(BASE))
    sim.schedule_cmd(commands.PATCH_SCHEDULE, op="backfill", start_time_ms=BASE,
                     end_time_ms=BASE)
    sim.tick_to(sim.time_ms)
    last = sim.sched()["recent"][-1]
    assert last["action"] == "refused" and "ALREADY_EXISTS" in last["detail"], last
    info = schedule_info(sim.sched(), 0)
    assert info.started == 3 and not info.paused and len(info.next_action_times_ms) == 5


def test_update_replans_and_delete_removes_the_timer(sim):
    sim.create()
    spec = {"interval_ms": 60_000}
    result = sim.schedule_cmd(commands.UPDATE_SCHEDULE, spec=spec,
                              action={"workflow_type": "twice", "input": codec.pack({"n": 2})},
                              policy={"overlap": "BUFFER_ALL"})
    assert "error" not in result, result
    record = sim.sched()
    assert record["next_nominal_ms"] % 60_000 == 0 and record["policy"]["overlap"] == "BUFFER_ALL"
    assert sim.read(lambda txn: len(list(txn.scan(keys.TIMERS)))) == 1
    assert "error" not in sim.schedule_cmd(commands.DELETE_SCHEDULE)
    assert sim.sched() is None
    assert sim.read(lambda txn: list(txn.scan(keys.TIMERS))) == []
    assert sim.schedule_cmd(commands.DELETE_SCHEDULE)["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("spec, policy, field, words", [
    ({"cron": "61 * * * *"}, {}, "cron", "bad cron expression"),
    ({"cron": "* * * *"}, {}, "cron", "has 4 fields"),
    ({"cron": "* * * * * *"}, {}, "cron", "has 6 fields"),
    ({"cron": "@fortnightly"}, {}, "cron", "unknown cron macro"),
    ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, {}, "timezone", "unknown time zone"),
    ({"interval_ms": 10}, {}, "interval_ms", "at least 1000"),
    ({"interval_ms": 10_000, "cron": "* * * * *"}, {}, "spec", "exactly one"),
    ({}, {}, "spec", "exactly one"),
    ({"interval_ms": 10_000}, {"overlap": "SOMETIMES"}, "overlap", "unknown overlap policy"),
    ({"interval_ms": 10_000}, {"catchup_window_ms": 5}, "catchup_window_ms", "at least"),
])
def test_bad_specs_and_policies_are_refused_by_name(sim, spec, policy, field, words):
    result = sim.schedule_cmd(commands.CREATE_SCHEDULE, spec=spec, policy=policy,
                              action={"workflow_type": "twice", "input": codec.pack({})})
    error = result["error"]
    assert error["code"] == "INVALID_ARGUMENT" and words in error["message"], error
    assert error["details"]["field"] == field
    assert sim.sched() is None


def test_an_undeclared_type_is_refused_unless_allowed(sim):
    result = sim.schedule_cmd(commands.CREATE_SCHEDULE, spec={"interval_ms": 10_000},
                              action={"workflow_type": "nope", "input": codec.pack({})})
    assert result["error"]["code"] == "NOT_FOUND"
    result = sim.schedule_cmd(commands.CREATE_SCHEDULE, spec={"interval_ms": 10_000},
                              action={"workflow_type": "nope", "input": codec.pack({})},
                              allow_undeclared_type=True)
    assert "error" not in result


# --- the spec on its own ---------------------------------------------------------------------

def _ms(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).timestamp() * 1000)


def test_cron_in_a_time_zone_follows_daylight_saving():
    spec = schedule_spec.validate({"cron": "0 9 * * *", "timezone": "Europe/Paris"})
    # Paris moves from UTC+1 to UTC+2 on 2026-03-29.
    first = schedule_spec.next_after(spec, _ms("2026-03-28T00:00:00+00:00"))
    second = schedule_spec.next_after(spec, first)
    assert schedule_spec.iso(first) == "2026-03-28T08:00:00Z"
    assert schedule_spec.iso(second) == "2026-03-29T07:00:00Z"
    assert schedule_spec.next_after(schedule_spec.validate({"cron": "@hourly"}),
                                    _ms("2026-01-01T10:30:00+00:00")) == _ms(
        "2026-01-01T11:00:00+00:00")


def test_interval_offset_bounds_and_jitter():
    spec = schedule_spec.validate({"interval_ms": 60_000, "offset_ms": 5_000,
                                   "start_time_ms": 120_000, "end_time_ms": 300_000,
                                   "jitter_ms": 2_000})
    times, t = [], 0
    while (t := schedule_spec.next_after(spec, t)) is not None:
        times.append(t)
    assert times == [125_000, 185_000, 245_000]
    assert schedule_spec.next_after(spec, 119_999) == 125_000
    jitters = {schedule_spec.jitter_ms(spec, "s", n) for n in range(0, 10**6, 1000)}
    assert all(0 <= j < 2_000 for j in jitters) and len(jitters) > 100
    assert schedule_spec.jitter_ms(spec, "s", 5) == schedule_spec.jitter_ms(spec, "s", 5)
