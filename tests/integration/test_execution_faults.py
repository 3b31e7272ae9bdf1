"""Durable execution under kill -9: real Flow nodes, real supervisors, real worker processes.

Every test runs a real three-node cluster (`coda-flow serve` processes) and one or two
real supervisors (`coda supervisor run MODULE`), with workflow modules written to
tmp_path. Tasks record each execution's start and completion in an append-only file named
by an environment variable (one O_APPEND write per line, so lines of concurrent processes
never interleave), so "a task ran twice" is judged outside the engine.

The invariant (DESIGN.md, invariant 2) and how these tests check it
------------------------------------------------------------------------
"An acknowledged task result is never lost or changed; a completed task is not run again
(at-least-once only while its attempt is unacknowledged)."

Flow numbers a task's attempts 1, 2, ...; an attempt's result is committed only while that
attempt is the task's current one (fencing), and a new attempt is made only after the
current one ended (failed, timed out, or lost with its supervisor). Each task returns the
attempt and pid of the execution that produced it, and the workflow returns the results it
was given, which are the committed (acknowledged) ones. So for every task key, with A the
attempt whose result was acknowledged:

- exactly one execution of attempt A started, and it is the one that recorded a completion
  with attempt A (the result the workflow got is the result that execution produced);
- no execution of an attempt after A ever started: nothing ran again once the result was
  acknowledged;
- executions of attempts before A may exist only where the fault allows them: in a worker
  the test killed, or under the supervisor it killed; for a leader kill (no process of the
  supervisor dies), anywhere: their completions were never acknowledged (the dead leader
  did not commit them, and the new leader re-queued the attempt), which fencing then
  rejects. That is the at-least-once the invariant allows.

Each test adds what its fault makes exact (e.g. keys whose result was already in the
workflow's history before the kill ran exactly once).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from collections import defaultdict

import pytest

from coda.client.client import Client
from exec_helpers import LOG_ENV, RECORDER, read_records, wait_for, write_module
from harness import SupervisorProcess

pytestmark = pytest.mark.cluster

# Supervisor lease of the kill tests (heartbeats every third of it); the 2,000-workflow
# test, which kills nothing and loads the machine most, keeps a longer one.
LEASE_MS = 2000
LOADED_LEASE_MS = 3000


# Workflows of sequential steps; step n sleeps steps[n] seconds. Each step's result names
# the execution that produced it.
CHAIN_MODULE = RECORDER + '''
import asyncio
import coda


@coda.task(name="step", retry=coda.RetryPolicy(initial_interval=0.2, maximum_interval=1.0))
async def step(n, sleep_s):
    info = record("started", n=n)
    await asyncio.sleep(sleep_s)
    record("completed", n=n)
    return {"value": f"{info.workflow_id}:{n}", "attempt": info.attempt, "pid": os.getpid()}


@coda.workflow(name="chain")
async def chain(steps):
    out = []
    for n, sleep_s in enumerate(steps):
        out.append(await coda.context.spawn_task(step, args={"n": n, "sleep_s": sleep_s},
                                                 cache_key=[n]))
    return out
'''


# --- helpers ---------------------------------------------------------------------------------



def run(coro):
    return asyncio.run(coro)


async def start_all(address: str, workflow_type: str, args_by_id: dict, concurrency: int = 64):
    gate = asyncio.Semaphore(concurrency)
    async with Client(address, timeout_s=60.0) as client:
        async def one(wid):
            async with gate:
                return wid, (await client.start_workflow(workflow_type, args_by_id[wid],
                                                         workflow_id=wid)).run_id
        return dict(await asyncio.gather(*(one(w) for w in args_by_id)))


def results_of(address: str, workflow_ids, timeout_s: float, sups=None) -> dict:
    """workflow id -> its result; a workflow that does not complete in time fails the test
    with the supervisors' log tails."""
    try:
        return run(_results_of(address, workflow_ids, timeout_s))
    except Exception as exc:
        logs = sups.logs() if sups is not None else ""
        raise AssertionError(f"workflows did not all complete: {exc!r}\n{logs}") from exc


async def _results_of(address: str, workflow_ids, timeout_s: float, concurrency: int = 200):
    gate = asyncio.Semaphore(concurrency)
    async with Client(address, timeout_s=60.0) as client:
        async def one(wid):
            async with gate:
                return wid, await client.get_workflow_handle(wid).result(timeout=timeout_s)
        return dict(await asyncio.gather(*(one(w) for w in workflow_ids)))


async def completed_keys(address: str, workflow_ids) -> set[tuple[str, str]]:
    """(workflow id, task key) of every TaskCompleted event now in the histories."""
    async with Client(address, timeout_s=30.0) as client:
        histories = await asyncio.gather(*(client.workflow_history(w) for w in workflow_ids))
    return {(wid, e["key"]) for wid, events in zip(workflow_ids, histories)
            for e in events if e["type"] == "TaskCompleted"}


def executions_by_key(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(wid, key) -> {"n": step, "started": [records], "completed": [records]}."""
    out: dict = defaultdict(lambda: {"started": [], "completed": []})
    for r in records:
        entry = out[(r["wid"], r["key"])]
        entry["n"] = r.get("n")
        entry[r["event"]].append(r)
    return dict(out)


def check_executions(records: list[dict], results: dict[str, list], killed_pids: set[int] | None,
                     expected_steps: dict[str, int]) -> dict:
    """The invariant of the module docstring. `results`: workflow id -> its result (the
    acknowledged step results, in step order); `killed_pids`: the processes the test
    killed, the only ones where an attempt before the acknowledged one may have run (None:
    anywhere, for faults that kill no worker). Returns {"rerun": [((wid, n), starts,
    completions, acknowledged attempt)]} for the keys that started more than once."""
    by_key = executions_by_key(records)
    rerun: list = []
    seen_steps: dict[str, set] = defaultdict(set)
    for (wid, key), entry in by_key.items():
        n = entry["n"]
        seen_steps[wid].add(n)
        result = results[wid][n]
        assert result["value"] == f"{wid}:{n}", (wid, n, result)
        attempt, pid = result["attempt"], result["pid"]
        starts = [(r["attempt"], r["pid"]) for r in entry["started"]]
        completions = [(r["attempt"], r["pid"]) for r in entry["completed"]]
        assert starts.count((attempt, pid)) == 1, \
            f"{wid} step {n}: the acknowledged attempt {attempt} (pid {pid}) started {starts}"
        assert completions.count((attempt, pid)) == 1, \
            f"{wid} step {n}: the acknowledged attempt {attempt} (pid {pid}) completed {completions}"
        later = [s for s in starts if s[0] > attempt]
        assert not later, (f"{wid} step {n}: ran again after its result (attempt {attempt}) "
                           f"was acknowledged: {later}")
        same_attempt_twice = [s for s in starts if s[0] == attempt and s != (attempt, pid)]
        assert not same_attempt_twice, f"{wid} step {n}: attempt {attempt} ran twice: {starts}"
        earlier = [s for s in starts if s[0] < attempt]
        assert killed_pids is None or all(p in killed_pids for _, p in earlier), \
            (f"{wid} step {n}: earlier attempts {earlier} ran outside the killed processes "
             f"{sorted(killed_pids)}")
        if len(starts) > 1:
            rerun.append(((wid, n), starts, completions, attempt))
    for wid, steps in expected_steps.items():
        assert seen_steps[wid] == set(range(steps)), (wid, sorted(seen_steps[wid]))
        assert [r["value"] for r in results[wid]] == [f"{wid}:{n}" for n in range(steps)]
    return {"rerun": rerun}


def supervisor_metric(sup: SupervisorProcess, name: str) -> float:
    """The sum of a supervisor metric's samples over its labels (shards)."""
    url = f"http://127.0.0.1:{sup.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{")[0].split(" ")[0] == name)


def assert_ran_once(by_key: dict, keys) -> None:
    """Tasks whose results were acknowledged before a kill: started and completed once."""
    for key in keys:
        entry = by_key[key]
        assert len(entry["started"]) == 1 and len(entry["completed"]) == 1, \
            f"{key} was acknowledged before the kill and ran again: {entry}"


def lease_expiries(cluster) -> list[tuple[str, float]]:
    """(supervisor id, wall-clock time) of every lease expiry the nodes logged."""
    out = []
    for i in range(len(cluster.nodes)):
        for line in cluster.read_log(i).splitlines():
            match = re.match(r"(\S+ \S+),(\d+) WARNING coda\.flow\.dispatcher: shard \d+: "
                             r"supervisor (\S+) lease expired", line)
            if match:
                stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
                out.append((match[3], stamp + int(match[2]) / 1000))
    return out


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no RSS for pid {pid}")


def child_pids(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry))
    return out


class Supervisors:
    """Supervisor processes of one test; each is killed at the end whatever happened."""

    def __init__(self, cluster, tmp_path, module_dir: str, env: dict):
        self.cluster, self.tmp_path = cluster, tmp_path
        self.module_dir, self.env = module_dir, env
        self.made: list[SupervisorProcess] = []

    def start(self, module: str, **kwargs) -> SupervisorProcess:
        sup = SupervisorProcess(self.cluster, module, root=str(self.tmp_path / "supervisors"),
                                module_dir=self.module_dir, env=self.env, **kwargs).start()
        self.made.append(sup)
        return sup

    def close(self) -> None:
        for sup in self.made:
            if sup.proc is None or sup.proc.poll() is not None:
                continue
            try:
                pids = sup.worker_pids()
            except (OSError, ValueError):
                pids = []  # its workers exit anyway when its pipes close
            sup.proc.kill()
            sup.proc.wait()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def logs(self) -> str:
        return "\n".join(f"--- {s.supervisor_id}:\n{s.read_log()[-4000:]}" for s in self.made)


@pytest.fixture
def chain_cluster(make_cluster, tmp_path):
    """(cluster, supervisors, log path) with CHAIN_MODULE written as `chainflows`."""
    made = []

    def make(*, shards: int, module_source: str = CHAIN_MODULE, module: str = "chainflows"):
        cluster = make_cluster(shards=shards, supervisor_lease_ms=LEASE_MS)
        cluster.start()
        cluster.wait_leaders()
        log_path = str(tmp_path / "executions.jsonl")
        module_dir = write_module(tmp_path / "modules", module, module_source)
        sups = Supervisors(cluster, tmp_path, module_dir, {LOG_ENV: log_path})
        made.append(sups)
        return cluster, sups, log_path

    yield make
    for sups in made:
        sups.close()


SLEEP_MODULE = RECORDER + '''
import coda


@coda.task(name="after_nap")
def after_nap():
    record("after_nap")
    return "woke"


@coda.workflow(name="napper")
async def napper(seconds):
    await coda.context.sleep(seconds)
    return await coda.context.spawn_task(after_nap)
'''


def test_a_sleep_survives_kill_9_of_the_shard_leader_and_of_a_worker(chain_cluster):
    """A 2 s durable sleep: the shard's leader and a worker die while it sleeps. The new
    leader fires the timer (it is in the log and LMDB, not in anyone's memory), exactly
    once and not before its time; the workflow resumes by replay on the new worker."""
    cluster, sups, log_path = chain_cluster(shards=2, module_source=SLEEP_MODULE,
                                            module="sleepers")
    sup = sups.start("sleepers", workers=2)
    sup.wait_connected()
    wid = "nap-1"
    run(start_all(cluster.address, "napper", {wid: {"seconds": 2}}))
    with cluster.client() as client:
        wait_for(lambda: any(e["type"] == "TimerStarted"
                             for e in client.workflow_history(wid)), 20, "the timer started")
    leader = cluster.leader_node(cluster.shard_of(wid))
    cluster.kill(leader)
    victim = sup.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    result = results_of(cluster.address, [wid], 60)[wid]
    assert result == "woke"
    with cluster.client(node=[i for i in range(3) if i != leader]) as client:
        history = client.workflow_history(wid)
    [started] = [e for e in history if e["type"] == "TimerStarted"]
    fired = [e for e in history if e["type"] == "TimerFired"]
    assert len(fired) == 1, fired
    assert fired[0]["time_ms"] >= started["fire_at_ms"]
    assert [r["event"] for r in read_records(log_path)] == ["after_nap"]  # ran once


# --- 1. a worker process killed mid-task -----------------------------------------------------

def test_worker_killed_mid_task(chain_cluster):
    """kill -9 of the worker running a slow task: the pool reports it dead, Flow retries the
    task (attempt 2, on the restarted or the other worker) and the workflow completes.
    Steps that completed before the kill are replayed, not run again; the only execution
    that appears twice is the killed one."""
    cluster, sups, log_path = chain_cluster(shards=2)
    sup = sups.start("chainflows", workers=2)
    sup.wait_connected()
    workers_before = set(sup.worker_pids())
    assert len(workers_before) == 2

    # Three quick steps, a slow one (2 s) to kill, three quick ones.
    steps = [0.05, 0.05, 0.05, 2.0, 0.05, 0.05, 0.05]
    wids = [f"wk-{i}" for i in range(3)]
    t0 = time.monotonic()
    run(start_all(cluster.address, "chain", {w: {"steps": steps} for w in wids}))

    target = wids[0]
    slow = wait_for(lambda: next((r for r in read_records(log_path)
                                  if r["wid"] == target and r["n"] == 3
                                  and r["event"] == "started"), None), 60, "the slow step started")
    victim = slow["pid"]
    assert victim in workers_before
    time.sleep(0.3)  # well inside the 2 s sleep
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    results = results_of(cluster.address, wids, 60, sups)
    done_at = time.monotonic()
    records = read_records(log_path)
    checked = check_executions(records, results, {victim}, {w: len(steps) for w in wids})

    by_key = executions_by_key(records)
    target_slow = next(e for (w, _), e in by_key.items() if w == target and e["n"] == 3)
    assert [r["attempt"] for r in target_slow["started"]] == [1, 2]
    assert target_slow["started"][0]["pid"] == victim
    assert [r["attempt"] for r in target_slow["completed"]] == [2]
    assert target_slow["completed"][0]["pid"] != victim
    # Steps 0-2 of the target completed before the kill: exactly one execution each.
    for (w, _), e in by_key.items():
        if w == target and e["n"] < 3:
            assert len(e["started"]) == 1, e
    # At most one completed execution per key; only killed attempts started twice.
    assert all(len(e["completed"]) == 1 for e in by_key.values())
    # Every rerun is an execution the kill interrupted, in the killed process.
    for (wid, n), starts, completions, attempt in checked["rerun"]:
        assert all(p == victim for a, p in starts if a < attempt), (wid, n, starts)
        assert all(p == victim for a, p in completions if a < attempt), (wid, n, completions)

    workers_after = set(sup.worker_pids())
    assert len(workers_after) == 2 and victim not in workers_after, workers_after
    # Seven-step workflows: after the first workflow task of a run, Flow sent only the new
    # events and the supervisor's history cache supplied the rest.
    cache = sup.health()["history_cache"]
    assert cache["hits"] >= 3 * 6, cache
    print(f"\nworker kill: {len(checked['rerun'])} interrupted executions re-run; "
          f"kill -> all {len(wids)} workflows complete {done_at - killed_at:.2f} s "
          f"(start -> complete {done_at - t0:.2f} s)")


# --- 2. a supervisor killed mid-workflow ----------------------------------------------------

def test_supervisor_killed_mid_workflow(chain_cluster):
    """kill -9 of supervisor A (its workers too, like a machine dying) while B runs the same
    module: A's sessions break, but its assignments stay A's until its lease (LEASE_MS)
    expires; then Flow re-queues them and B runs them; every workflow completes. Results
    that were acknowledged (in the history before the kill) are never produced again."""
    cluster, sups, log_path = chain_cluster(shards=2)
    a = sups.start("chainflows", workers=2, supervisor_id="sup-a")
    b = sups.start("chainflows", workers=2, supervisor_id="sup-b")
    a.wait_connected()
    b.wait_connected()
    a_pids, b_pids = set(a.worker_pids()), set(b.worker_pids())

    steps = [1.0] * 5
    wids = [f"sk-{i}" for i in range(8)]
    t0 = time.monotonic()
    run(start_all(cluster.address, "chain", {w: {"steps": steps} for w in wids}))

    def a_busy():
        """A has completed a task, and started one less than 0.3 s ago (of its 1 s)."""
        records = read_records(log_path)
        a_done = any(r["pid"] in a_pids for r in records if r["event"] == "completed")
        fresh = [r for r in records if r["event"] == "started" and r["pid"] in a_pids
                 and time.time() - r["t"] < 0.3]
        return a_done and fresh

    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "supervisor A never ran a task"
        acked_before = run(completed_keys(cluster.address, wids))
        if a_busy():
            break
        time.sleep(0.02)
    a.kill()
    killed_at, killed_wall = time.monotonic(), time.time()

    results = results_of(cluster.address, wids, 90, sups)
    done_at = time.monotonic()
    records = read_records(log_path)
    checked = check_executions(records, results, a_pids, {w: len(steps) for w in wids})

    by_key = executions_by_key(records)
    assert_ran_once(by_key, acked_before)
    # What A was running when it died ran again on B, and only after A's lease expired.
    after_kill = [r for r in records if r["event"] == "started" and r["t"] > killed_wall]
    assert after_kill and all(r["pid"] in b_pids for r in after_kill), \
        "after the kill, tasks run on B only"
    orphans = [(wid, n) for (wid, n), starts, _, _ in checked["rerun"]]
    assert orphans, "the task A was running when it died is run again"
    retried = [r for r in after_kill if (r["wid"], r["n"]) in orphans]
    first_retry_s = min(r["t"] for r in retried) - killed_wall
    # A's last heartbeat came at most a third of a lease before the kill.
    assert first_retry_s >= LEASE_MS / 1000 * 2 / 3 - 0.1, \
        f"A's work moved {first_retry_s:.2f} s after the kill, before its lease could expire"
    health = b.health()
    assert health["healthy"] and set(health["workers"]) == b_pids
    expiries = lease_expiries(cluster)
    assert expiries and all(sid == "sup-a" for sid, _ in expiries), expiries
    expired_s = min(t for _, t in expiries) - killed_wall
    print(f"\nsupervisor kill: {len(orphans)} of A's executions re-run on B; kill -> A's lease "
          f"expired {expired_s:.2f} s (lease {LEASE_MS} ms) -> first re-run "
          f"{first_retry_s:.2f} s -> all {len(wids)} workflows complete "
          f"{done_at - killed_at:.2f} s after the kill (start -> complete {done_at - t0:.2f} s); "
          f"{len(acked_before)} results acknowledged before the kill")


# --- 3. the shard leader killed mid-workflow ------------------------------------------------

def test_shard_leader_killed_mid_workflow(chain_cluster):
    """kill -9 of the leader of a shard while several workflows of sequential tasks run on
    it (and others on the other shards). The supervisor reconnects to the new leader, says
    what it still runs and resends the completions not yet acknowledged (same request ids:
    the shard dedups them). All workflows complete with the right results.

    What may legitimately run twice: a task whose result was sent but whose commit was not
    acknowledged when the leader died, if the new leader then re-queued it (its attempt
    then never counts: fencing rejects its completion). What must not: anything after its
    result was acknowledged. Checked as in the module docstring (no execution of an attempt
    after the acknowledged one; the acknowledged execution is the one whose result the
    workflow got), and sharper for results already in the history just before the kill:
    those keys ran exactly once. Each key completes at most twice."""
    cluster, sups, log_path = chain_cluster(shards=3)
    sup = sups.start("chainflows", workers=2)
    sup.wait_connected()

    target_shard = 0
    by_shard = cluster.ids_by_shard("lk", 8)
    wids = by_shard[target_shard] + [w for s, ws in by_shard.items() if s != target_shard
                                     for w in ws[:2]]
    steps = [0.05] * 24  # short steps: completions are in flight most of the time
    run(start_all(cluster.address, "chain", {w: {"steps": steps} for w in wids}))
    victim = cluster.leader_node(cluster.shard_of(wids[0]))  # wids[0] is on target_shard
    survivors = [i for i in range(3) if i != victim]

    def progressed():
        done = [r for r in read_records(log_path) if r["event"] == "completed"
                and r["wid"] in by_shard[target_shard]]
        return len(done) >= 4 * len(by_shard[target_shard])
    wait_for(progressed, 60, "four steps of every workflow of the target shard")
    acked_before = run(completed_keys(cluster.address_of(survivors), wids))
    cluster.kill(victim)
    killed_at, killed_wall = time.monotonic(), time.time()

    results = results_of(cluster.address_of(survivors), wids, 120, sups)
    done_at = time.monotonic()
    records = read_records(log_path)
    checked = check_executions(records, results, None, {w: len(steps) for w in wids})

    by_key = executions_by_key(records)
    assert_ran_once(by_key, acked_before)
    for key, entry in by_key.items():
        assert len(entry["completed"]) <= 2, (key, entry)
    target_after = sorted(r["t"] for r in records if r["event"] == "started"
                          and r["t"] > killed_wall and r["wid"] in by_shard[target_shard])
    first_after_s = target_after[0] - killed_wall
    cluster.assert_alive(survivors)
    assert sup.health()["healthy"]
    resent = supervisor_metric(sup, "coda_supervisor_completions_resent_total")
    rejected = supervisor_metric(sup, "coda_supervisor_completions_rejected_total")
    print(f"\nleader kill (node {victim}, shard {target_shard}): kill -> first step started on "
          f"the shard {first_after_s:.2f} s; kill -> all {len(wids)} workflows complete "
          f"{done_at - killed_at:.2f} s; {len(acked_before)} results acknowledged before the "
          f"kill; completions resent {resent:g}, rejected {rejected:g}; lease expiries "
          f"{len(lease_expiries(cluster))}; "
          f"{len(checked['rerun'])} keys ran more than once: {checked['rerun']}")


# --- 4. 2,000 waiting workflows on one supervisor -------------------------------------------

WAITER_MODULE = '''
import coda


@coda.workflow(name="waiter")
async def waiter(i):
    got = await coda.context.spawn_task("gate", args={"i": i})
    return got * 2
'''

GATE_MODULE = RECORDER + '''
import asyncio
import coda


@coda.task(name="gate")
async def gate(i):
    record("started", n=0)
    while not os.path.exists(os.environ["CODA_TEST_RELEASE"]):
        await asyncio.sleep(0.05)
    record("completed", n=0)
    return i
'''

WAITING = 2000
GATE_SLOTS = 16


def test_thousands_of_waiting_workflows_hold_no_process(make_cluster, tmp_path):
    """2,000 workflows started at once on one supervisor with 2 worker processes: each runs
    its first workflow task there and then waits for its `gate` task. The gates run on a
    second supervisor with GATE_SLOTS slots, and each blocks until a release file appears,
    so all but GATE_SLOTS gate tasks wait, queued in Flow. (Not one supervisor for both:
    slots are per supervisor, not per type, so once blocked gates held all its slots it
    would run no more workflow tasks.) While all 2,000 workflows are RUNNING, the
    workflow supervisor holds nothing in flight, still has exactly 2 worker processes
    (its only children) and a bounded number of threads: a waiting workflow holds no
    process and no thread. Then the release: every workflow completes with its result
    (the worker's run cache holds 500 runs, so most of them are rebuilt by replay)."""
    cluster = make_cluster(shards=2, supervisor_lease_ms=LOADED_LEASE_MS)
    cluster.start()
    cluster.wait_leaders()
    log_path = str(tmp_path / "executions.jsonl")
    release = str(tmp_path / "release")
    module_dir = write_module(tmp_path / "modules", "waiters", WAITER_MODULE)
    write_module(tmp_path / "modules", "gates", GATE_MODULE)
    sups = Supervisors(cluster, tmp_path, module_dir,
                       {LOG_ENV: log_path, "CODA_TEST_RELEASE": release})
    try:
        gates = sups.start("gates", workers=1, slots=GATE_SLOTS, supervisor_id="gates")
        gates.wait_connected()  # declares `gate` before any workflow schedules it
        wf = sups.start("waiters", workers=2, supervisor_id="waiters")
        wf.wait_connected()
        workers = wf.worker_pids()
        assert len(workers) == 2
        threads_idle = {pid: thread_count(pid) for pid in workers}

        wids = [f"wait-{i}" for i in range(WAITING)]
        t0 = time.monotonic()
        run(start_all(cluster.address, "waiter", {w: {"i": i} for i, w in enumerate(wids)}))
        started_s = time.monotonic() - t0

        def all_parked():
            status = cluster.status()
            depths = defaultdict(int)
            for shard in status["shards"]:
                for queue, depth in shard["queue_depths"].items():
                    depths[queue] += depth
            gate_queued = sum(d for q, d in depths.items() if "gate" in q)
            wf_queued = sum(d for q, d in depths.items() if "waiter" in q)
            return (gate_queued >= WAITING - GATE_SLOTS and wf_queued == 0
                    and wf.health()["items"] == 0) and (gate_queued, dict(depths))
        gate_queued, depths = wait_for(all_parked, 120, "every workflow waits on its gate",
                                       poll_s=0.2)
        parked_s = time.monotonic() - t0

        running = run(count_status(cluster.address, "RUNNING"))
        assert running == WAITING, running
        health = wf.health()
        assert health["items"] == 0 and health["in_flight"] == 0, health
        assert sorted(health["workers"]) == sorted(workers), health
        assert child_pids(wf.proc.pid) == set(workers)
        threads = {pid: thread_count(pid) for pid in workers}
        supervisor_threads = thread_count(wf.proc.pid)
        assert all(n <= 64 for n in threads.values()), threads
        assert supervisor_threads <= 64, supervisor_threads
        running_gates = gates.health()["items"]
        assert running_gates <= GATE_SLOTS, running_gates
        rss_mib = {pid: rss_kib(pid) // 1024 for pid in workers}

        open(release, "w").close()
        released = time.monotonic()
        wait_for(lambda: run(count_status(cluster.address, "RUNNING")) == 0, 180,
                 "every workflow completes after the release", poll_s=0.5)
        completed_s = time.monotonic() - released
        total_s = time.monotonic() - t0
        infos = run(describe_all(cluster.address, wids))
        for i, wid in enumerate(wids):
            assert infos[wid]["status"] == "COMPLETED" and infos[wid]["result"] == 2 * i, \
                infos[wid]
        ran = executions_by_key(read_records(log_path))
        assert len(ran) == WAITING
        assert all(len(e["completed"]) == 1 for e in ran.values())
        assert len(wf.worker_pids()) == 2
        print(f"\n{WAITING} waiting workflows: started (acked) in {started_s:.1f} s, all parked "
              f"waiting on their gate {parked_s:.1f} s after the first start (gate queue "
              f"{gate_queued}, {running_gates} gates running); workflow supervisor: 0 items "
              f"in flight, 2 workers, threads {threads} (idle {threads_idle}), RSS MiB {rss_mib}, "
              f"supervisor {supervisor_threads} threads; release -> all complete {completed_s:.1f} s "
              f"(first start -> all complete {total_s:.1f} s)")
    finally:
        sups.close()


async def count_status(address: str, status: str) -> int:
    async with Client(address, timeout_s=60.0) as client:
        count = 0
        async for _ in client.iter_workflows(statuses=[status], page_size=1000):
            count += 1
        return count


async def describe_all(address: str, workflow_ids, concurrency: int = 64) -> dict:
    gate = asyncio.Semaphore(concurrency)
    async with Client(address, timeout_s=60.0) as client:
        async def one(wid):
            async with gate:
                return wid, await client.describe_workflow(wid)
        return dict(await asyncio.gather(*(one(w) for w in workflow_ids)))
