"""`coda schedule ...` as a user runs it: a subprocess against a real three-node cluster.

Covered: `create` with --interval and --cron/--timezone (human and --json), `describe`
(spec, policy, next action times as exact UTC instants, running runs and recent actions),
a run started by the schedule's own timer, `pause`/`unpause` with notes, `trigger`,
`backfill` (one run per nominal time under ALLOW_ALL, skipped under SKIP), `update`
replacing the whole definition, `delete`, `list` (human, --json, paging, --all), and bad
input: cron out of range or with 6 fields, an unknown time zone, an unknown overlap policy,
both or neither of --cron and --interval, a time without an offset, an existing id, an
undeclared workflow type.

No supervisor runs here: schedules are created with undeclared types allowed, and the runs
they start are stored (RUNNING for ever), not executed. One cluster serves the module.
"""

from __future__ import annotations

import datetime
import re
import time
import uuid
import zoneinfo

import pytest

from cli_helpers import as_json, coda, failed, module_cluster, nodes_survive, ok, uid

pytestmark = pytest.mark.cluster

SHARDS = 2
UTC = datetime.timezone.utc


def human_sections(text: str) -> dict[str, list[str]]:
    """`schedule describe`'s lines -> {key: [value, continuation rows...]}."""
    out: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        if not line.startswith(" "):
            key, _, value = line.partition(" ")
            out[key] = [value.strip()]
        else:
            out[key].append(line.strip())
    return out


def iso(ms: int) -> str:
    """UTC ISO as in schedule run ids: milliseconds only when not zero."""
    moment = datetime.datetime.fromtimestamp(ms // 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}" if ms % 1000 else "") + "Z"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "schedule-cli", SHARDS)


@pytest.fixture(autouse=True)
def _nodes_survive(request):
    yield from nodes_survive(request)


@pytest.fixture
def cli(cluster):
    """`coda ...` against the module's cluster."""
    return lambda *args, **kwargs: coda(*args, address=cluster.address, **kwargs)


def describe(cli, schedule_id: str) -> dict:
    return as_json(cli("schedule", "describe", schedule_id, "--json"))


def workflow(cli, workflow_id: str, timeout_s: float = 15.0) -> dict:
    """A run a schedule started, once it exists: the schedule records a start at once, and
    its shard's outbox delivers it to the run's shard a moment later."""
    deadline = time.monotonic() + timeout_s
    while (result := cli("--json", "workflow", "describe", workflow_id)).returncode != 0:
        assert "NOT_FOUND" in result.stderr, result.stderr
        assert time.monotonic() < deadline, (workflow_id, result.stderr)
        time.sleep(0.3)
    return as_json(result)


# --- an interval schedule ------------------------------------------------------------------

def test_interval_schedule_starts_runs(cli):
    sid = uid("every2")
    created = as_json(cli("schedule", "create", sid, "--workflow", "sched_type", "--interval",
                          "2", "--args", '{"team": "ops"}', "--json"))
    assert created == {"schedule_id": sid, "ok": True}, created

    info = describe(cli, sid)
    assert info["schedule_id"] == sid and info["paused"] is False, info
    assert info["spec"]["interval_ms"] == 2000 and info["spec"]["cron"] is None, info
    assert info["policy"]["overlap"] == "SKIP", info
    assert info["action"] == {"workflow_type": "sched_type", "args": {"team": "ops"},
                              "execution_timeout_ms": None}, info
    upcoming = info["next_action_times_ms"]
    assert len(upcoming) == 5 and upcoming[0] > info["created_ms"], info
    assert all(t % 2000 == 0 for t in upcoming), upcoming  # aligned to the epoch
    assert [b - a for a, b in zip(upcoming, upcoming[1:])] == [2000] * 4, upcoming

    human = human_sections(ok(cli("schedule", "describe", sid)))
    assert human["schedule_id"] == [sid] and human["workflow_type"] == ["sched_type"], human
    assert human["spec"] == ["every 2s"] and human["overlap"] == ["SKIP"], human
    assert human["paused"] == ["no"] and human["args"] == ['{"team":"ops"}'], human
    assert len(human["next"]) == 5, human
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d[02468]Z", t) for t in human["next"])

    # Its timer fires within a couple of seconds: one run, named after its nominal time.
    deadline = time.monotonic() + 15
    while not (info := describe(cli, sid))["running"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    run = info["running"][0]
    assert run["workflow_id"] == f"{sid}-{iso(run['nominal_time_ms'])}", run
    assert re.fullmatch(rf"{re.escape(sid)}-\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        run["workflow_id"]), run
    started = [a for a in info["recent"] if a["action"] == "started"]
    assert started[0]["workflow_id"] == run["workflow_id"], info
    assert started[0]["source"] == "schedule", info
    assert info["counts"]["started"] == 1, info
    wf = workflow(cli, run["workflow_id"])
    assert (wf["workflow_type"], wf["status"]) == ("sched_type", "RUNNING"), wf
    history = as_json(cli("--json", "workflow", "history", run["workflow_id"]))
    assert history[0]["input"] == {"team": "ops"}, history  # --args reached the run

    # The run never closes (no supervisor): under SKIP later times are skipped, shown.
    human = human_sections(ok(cli("schedule", "describe", sid)))
    assert human["running"][0].startswith(run["workflow_id"] + " "), human
    assert any(row.startswith("started ") and run["workflow_id"] in row
               for row in human["recent"]), human
    ok(cli("schedule", "delete", sid))


# --- a cron schedule in a time zone --------------------------------------------------------

def paris_firsts_after(after_ms: int, count: int) -> list[int]:
    """09:30 Paris time on the 1st of each month, strictly after `after_ms`, as UTC ms."""
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    start = datetime.datetime.fromtimestamp(after_ms / 1000, UTC)
    year, month, out = start.year, start.month, []
    while len(out) < count:
        local = datetime.datetime(year, month, 1, 9, 30, tzinfo=paris)
        ms = int(local.timestamp()) * 1000
        if ms > after_ms:
            out.append(ms)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def test_cron_schedule_in_a_time_zone(cli):
    sid = uid("paris")
    out = ok(cli("schedule", "create", sid, "--workflow", "sched_type", "--cron", "30 9 1 * *",
                 "--timezone", "Europe/Paris", "--overlap", "buffer_one"))
    assert out == f"created schedule {sid}\n", out

    info = describe(cli, sid)
    assert info["spec"]["cron"] == "30 9 1 * *", info
    assert info["spec"]["timezone"] == "Europe/Paris" and info["spec"]["interval_ms"] is None
    assert info["policy"]["overlap"] == "BUFFER_ONE", info  # any case on the command line
    # Five months: 07:30Z in summer time, 08:30Z in winter time.
    expected = paris_firsts_after(info["created_ms"], 5)
    assert info["next_action_times_ms"] == expected, (info, [iso(t) for t in expected])

    human = human_sections(ok(cli("schedule", "describe", sid)))
    assert human["spec"] == ['cron "30 9 1 * *" Europe/Paris'], human
    assert human["timezone"] == ["Europe/Paris"] and human["overlap"] == ["BUFFER_ONE"], human
    assert human["next"] == [iso(t) for t in expected], human
    assert human["running"] == ["-"] and human["recent"] == ["-"], human
    ok(cli("schedule", "delete", sid))


# --- pause, unpause, trigger, backfill, update, delete -------------------------------------

def test_pause_trigger_backfill_update_delete(cli):
    sid = uid("ops")
    ok(cli("schedule", "create", sid, "--workflow", "sched_type", "--interval", "3600"))

    assert ok(cli("schedule", "pause", sid, "--note", "maintenance until 10:00")) == \
        f"paused {sid}\n"
    info = describe(cli, sid)
    assert info["paused"] is True and info["note"] == "maintenance until 10:00", info
    assert info["next_action_times_ms"] == [], info
    human = human_sections(ok(cli("schedule", "describe", sid)))
    assert human["paused"] == ["yes"] and human["note"] == ["maintenance until 10:00"], human
    assert human["next"] == ["-"], human

    # A trigger acts at once, paused or not (ALLOW_ALL: whatever the hour boundary did).
    assert as_json(cli("schedule", "trigger", sid, "--overlap", "ALLOW_ALL", "--json")) == {
        "schedule_id": sid, "ok": True}
    triggered = [a for a in describe(cli, sid)["recent"] if a["source"] == "trigger"]
    assert len(triggered) == 1 and triggered[0]["action"] == "started", triggered
    assert triggered[0]["workflow_id"] == f"{sid}-{iso(triggered[0]['nominal_time_ms'])}"
    assert workflow(cli, triggered[0]["workflow_id"])["status"] == "RUNNING"

    ok(cli("schedule", "unpause", sid, "--note", "back"))
    info = describe(cli, sid)
    assert info["paused"] is False and info["note"] == "back", info
    assert len(info["next_action_times_ms"]) == 5, info
    assert all(t % 3_600_000 == 0 for t in info["next_action_times_ms"]), info

    # Backfill a past range: one run per nominal time in it, ends included.
    ok(cli("schedule", "backfill", sid, "--start", "2024-01-01T00:00:00Z", "--end",
           "2024-01-01T05:00:00+02:00", "--overlap", "ALLOW_ALL"))
    wanted = [f"{sid}-2024-01-01T0{h}:00:00Z" for h in range(4)]
    info = describe(cli, sid)
    backfilled = [a for a in info["recent"] if a["source"] == "backfill"]
    assert [a["workflow_id"] for a in backfilled] == wanted, info
    assert all(a["action"] == "started" for a in backfilled), backfilled
    assert set(wanted) <= {r["workflow_id"] for r in info["running"]}, info
    for wid in wanted:
        assert workflow(cli, wid)["workflow_type"] == "sched_type"
    # The schedule's own SKIP applies when no --overlap is given: runs are running.
    ok(cli("schedule", "backfill", sid, "--start", "2024-02-01T00:00:00Z", "--end",
           "2024-02-01T00:00:00Z"))
    info = describe(cli, sid)
    february = [a for a in info["recent"] if a["nominal_time_ms"] == 1706745600000]
    assert [(a["action"], a["source"]) for a in february] == [("skipped", "backfill")], info
    failed(cli("workflow", "describe", f"{sid}-2024-02-01T00:00:00Z"), 1, "NOT_FOUND")

    # Update replaces the whole definition: the overlap not given is SKIP again.
    ok(cli("schedule", "update", sid, "--workflow", "other_type", "--cron", "@daily",
           "--overlap", "ALLOW_ALL"))
    ok(cli("schedule", "update", sid, "--workflow", "other_type", "--cron", "@daily"))
    info = describe(cli, sid)
    assert info["action"]["workflow_type"] == "other_type", info
    assert (info["spec"]["cron"], info["spec"]["interval_ms"]) == ("@daily", None), info
    assert info["policy"]["overlap"] == "SKIP" and info["note"] == "back", info
    assert all(t % 86_400_000 == 0 for t in info["next_action_times_ms"]), info

    assert as_json(cli("schedule", "delete", sid, "--json")) == {"schedule_id": sid, "ok": True}
    failed(cli("schedule", "describe", sid), 1, "error: NOT_FOUND: ", sid)
    failed(cli("schedule", "pause", sid), 1, "NOT_FOUND")
    assert workflow(cli, wanted[0])["status"] == "RUNNING"  # its runs live on


# --- list ----------------------------------------------------------------------------------

def test_list(cli):
    tag = uuid.uuid4().hex[:8]
    ids = [f"list-{tag}-{i}" for i in range(3)]
    for i, sid in enumerate(ids):
        ok(cli("schedule", "create", sid, "--workflow", f"list_type_{i}", "--interval",
               str(600 * (i + 1)), *(["--paused"] if i == 2 else [])))

    everything = as_json(cli("schedule", "list", "--all", "--json"))
    assert everything["next_page_token"] is None, everything
    listed = [s["schedule_id"] for s in everything["schedules"]]
    assert listed == sorted(listed) and set(ids) <= set(listed), listed
    mine = {s["schedule_id"]: s for s in everything["schedules"] if s["schedule_id"] in ids}
    assert mine[ids[1]]["spec"]["interval_ms"] == 1_200_000, mine
    assert mine[ids[2]]["paused"] is True and mine[ids[2]]["next_action_times_ms"] == []

    # Pages of one, by hand: every schedule once, in id order.
    seen, token = [], None
    for _ in range(len(listed) + 2):
        page = as_json(cli("--json", "schedule", "list", "--page-size", "1",
                           *(["--page-token", token] if token else [])))
        assert len(page["schedules"]) <= 1, page
        seen += [s["schedule_id"] for s in page["schedules"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == listed, (seen, listed)

    rows = {line.split()[0]: line for line in ok(cli("schedule", "list", "--all")).splitlines()}
    assert re.search(r" list_type_0 +every 600s +active +next \S+Z$", rows[ids[0]]), rows
    assert re.search(r" list_type_2 +every 1800s +paused next -$", rows[ids[2]]), rows
    for sid in ids:
        ok(cli("schedule", "delete", sid))


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, code, words", [
    (["--cron", "61 * * * *"], 1, ["error: INVALID_ARGUMENT: ", "bad cron expression",
                                   "61 * * * *"]),
    (["--cron", "0 * * * * *"], 1, ["INVALID_ARGUMENT", "has 6 fields", "standard 5"]),
    (["--cron", "@sometimes"], 1, ["INVALID_ARGUMENT", "unknown cron macro"]),
    (["--cron", "0 2 * * *", "--timezone", "Mars/Olympus"], 1,
     ["INVALID_ARGUMENT", "unknown time zone 'Mars/Olympus'"]),
    (["--interval", "60", "--overlap", "SOMETIMES"], 2,
     ["--overlap", "SOMETIMES", "SKIP", "BUFFER_ONE", "BUFFER_ALL", "CANCEL_OTHER",
      "TERMINATE_OTHER", "ALLOW_ALL"]),
    (["--cron", "0 2 * * *", "--interval", "60"], 2, ["exactly one of --cron", "--interval"]),
    ([], 2, ["exactly one of --cron", "--interval"]),
    (["--interval", "0.5"], 1, ["INVALID_ARGUMENT", "interval_ms must be at least 1000"]),
    (["--interval", "60", "--start-at", "2030-01-01T00:00:00"], 2,
     ["--start-at", "no UTC offset", "Z or +02:00"]),
    (["--interval", "60", "--end-at", "tomorrow"], 2, ["--end-at", "not an ISO-8601 time"]),
    (["--interval", "60", "--args", "[1]"], 2, ["--args", "JSON object"]),
])
def test_bad_definitions_are_refused(cli, argv, code, words):
    sid = uid("bad")
    failed(cli("schedule", "create", sid, "--workflow", "sched_type", *argv), code, *words)
    failed(cli("schedule", "describe", sid), 1, "NOT_FOUND")  # nothing was created


def test_refusals_from_the_server(cli):
    sid = uid("dup")
    ok(cli("schedule", "create", sid, "--workflow", "sched_type", "--interval", "600"))
    failed(cli("schedule", "create", sid, "--workflow", "sched_type", "--cron", "0 2 * * *"),
           1, "error: ALREADY_EXISTS: ", sid)
    assert describe(cli, sid)["spec"]["interval_ms"] == 600_000  # unchanged
    # An update is checked as a create is.
    failed(cli("schedule", "update", sid, "--workflow", "sched_type", "--cron", "0 2 * * *",
               "--timezone", "Mars/Olympus"), 1, "INVALID_ARGUMENT", "Mars/Olympus")
    failed(cli("schedule", "trigger", sid, "--overlap", "NOW"), 2, "--overlap", "ALLOW_ALL")
    failed(cli("schedule", "backfill", sid, "--start", "2024-01-02T00:00Z", "--end",
               "2024-01-01T00:00Z"), 2, "--end", "before --start")
    failed(cli("schedule", "backfill", sid, "--start", "2024-01-01T00:00:01Z", "--end",
               "2024-01-01T00:00:02Z"), 1, "INVALID_ARGUMENT", "no nominal time in that range")
    ok(cli("schedule", "delete", sid))
    failed(cli("schedule", "delete", sid), 1, "NOT_FOUND")

    # Without --allow-undeclared-type (or CODA_ALLOW_UNDECLARED_TYPES) a typo is caught.
    other = uid("undeclared")
    failed(cli("schedule", "create", other, "--workflow", "no_such_type", "--interval", "60",
               allow_undeclared=False), 1, "NOT_FOUND", "no_such_type")
    ok(cli("schedule", "create", other, "--workflow", "no_such_type", "--interval", "60",
           "--allow-undeclared-type", allow_undeclared=False))
    ok(cli("schedule", "delete", other))
