"""An isolated old leader never serves a stale read (DESIGN invariant 4), with a real partition.

Three `coda-flow serve` processes, each in its own network namespace; the test's client side
runs in a fourth (client_probe.py), so every packet to a node comes from inside the bridge.

1. Find shard S's leader L; start workflow A through L (run a1).
2. Cut L off from the other two nodes with iptables (the client namespace still reaches L).
3. Wait for the majority to elect a new leader M; through M start workflow B and restart A
   with TERMINATE_IF_RUNNING (run a2). Both acknowledged by a majority that excludes L.
4. While L's own GetLocalStatus still says it leads S (leader_fallback_timeout is 12 s here,
   so the window is wide), read B and A through L, one gRPC attempt each. L's LMDB has no B
   and has A at a1: answering from it would be stale. Allowed: an error
   (UNAVAILABLE / INDETERMINATE / NOT_LEADER / deadline) or the fresh value.
5. Heal; L catches up and, through L, B and A read fresh.

The test was checked against a replica whose read skips the log barrier: it fails with
"STALE READ" (B NOT_FOUND, A at a1). To repeat that without editing flow/, put a
sitecustomize.py that replaces `coda.flow.replica.ShardReplica.read` with a plain LMDB read
in a directory and run pytest with PYTHONPATH set to it (the nodes inherit the environment).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import pytest

from client_probe import Probe
from coda.flow.sharding import shard_for
from harness import Cluster

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

SHARDS = 2
SHARD = 0
FALLBACK_S = 12.0            # leader_fallback_timeout_s: L believes it leads this long
READ_DEADLINE_S = 12.0       # > proposal_timeout_s (10 s): L's own answer, not our deadline
READ_ROUNDS_MAX = 3
READ_ROUND_GAP_S = 1.0
READ_WINDOW_MARGIN_S = 2.0   # no new read round this close to L's fallback
ACCEPTABLE_ERRORS = {"UNAVAILABLE", "INDETERMINATE", "NOT_LEADER"}


def workflow_id_on(rng: random.Random, shard: int, label: str) -> str:
    while True:
        workflow_id = f"stale-{label}-{rng.getrandbits(32):08x}"
        if shard_for(workflow_id, SHARDS) == shard:
            return workflow_id


class Scenario:
    def __init__(self, net, cluster: Cluster, probe: Probe, rng: random.Random):
        self.net, self.cluster, self.probe, self.rng = net, cluster, probe, rng
        self.addr = [n["client"] for n in cluster.nodes]
        self.t_start = time.monotonic()
        self.events: list[str] = []

    def note(self, what: str) -> None:
        line = f"+{time.monotonic() - self.t_start:6.2f}s {what}"
        self.events.append(line)
        print(line, flush=True)

    def local(self, i: int, timeout: float = 2.0) -> dict | None:
        """Node i's own view of shard SHARD, or None if it didn't answer."""
        r = self.probe.call("local_status", target=self.addr[i], timeout=timeout)
        return r["value"]["replicas"][SHARD] if r["ok"] else None

    def wait_for(self, what: str, fn, timeout_s: float, period_s: float = 0.1):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(period_s)
        raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})\n"
                             + self.diagnostics())

    def diagnostics(self) -> str:
        out = ["events:", *self.events, f"iptables: {self.net.rules()}"]
        for i in range(len(self.addr)):
            text = self.cluster.read_log(i) if os.path.exists(self.cluster.log_path(i)) else ""
            out.append(f"--- node {i} log (tail) ---\n" + "\n".join(text.splitlines()[-25:]))
        return "\n".join(out)

    def leader_of_shard(self) -> int:
        def find():
            views = [self.local(i) for i in range(3)]
            leaders = [i for i, v in enumerate(views) if v and v["role"] == "leader"]
            # One leader, and every replica agrees on it (so it has been leading a while).
            if len(leaders) == 1 and all(v and v["leader"] == self.addr[leaders[0]] for v in views):
                return {"node": leaders[0]}
            return None
        return self.wait_for("shard leader", find, 30.0, 0.2)["node"]


def check_ok(result: dict, what: str) -> dict:
    assert result["ok"], f"{what}: {describe_outcome(result)}"
    return result["value"]


def classify(result: dict, expect_run: str) -> str:
    """'fresh', 'stale', 'refused' (an acceptable error) or 'unexpected'."""
    if result["ok"]:
        return "fresh" if result["value"]["run_id"] == expect_run else "stale"
    code = result["error"]["code"]
    if code == "NOT_FOUND":
        return "stale"       # every workflow read here exists on the majority
    return "refused" if code in ACCEPTABLE_ERRORS else "unexpected"


def describe_outcome(result: dict) -> str:
    took = result["t1"] - result["t0"]
    if result["ok"]:
        return f"ok run={result['value']['run_id']} ({took:.2f} s)"
    e = result["error"]
    return f"{e['code']} [{e['grpc']}] {e['message']!r} ({took:.2f} s)"


def test_isolated_old_leader_never_serves_stale_read(net, tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    print(f"seed {seed}")
    cluster = Cluster(str(tmp_path / "cluster"), nodes=3, shards=SHARDS, seed=seed,
                      raft={"leader_fallback_timeout_s": FALLBACK_S},
                      hosts=net.node_ip, wrap=net.wrap_node)
    probe = None
    try:
        cluster.start()
        for proc in cluster.procs:
            net.track(proc)
        probe = Probe(net, net.client_ns[0], log_path=str(tmp_path / "probe.log"))
        run_scenario(Scenario(net, cluster, probe, random.Random(seed)))
    finally:
        if probe is not None:
            probe.close()
        cluster.close()


@dataclass
class Facts:
    """What the phases learn and hand on: L, its term before the cut, the acknowledged runs."""
    wf_a: str
    wf_b: str
    leader: int = -1
    term: int = -1            # L's term before the cut
    t_iso: float = 0.0        # when L was cut off
    run_a1: str = ""
    run_b: str = ""
    run_a2: str = ""

    @property
    def majority(self) -> list[int]:
        return [i for i in range(3) if i != self.leader]

    @property
    def expected(self) -> dict[str, str]:
        return {self.wf_b: self.run_b, self.wf_a: self.run_a2}

    def label(self, wf: str) -> str:
        return "B" if wf == self.wf_b else "A"


class LeaderTimeline:
    """L's role as L reports it: (probe time the status request left, time it came back,
    role, term). A read counts as "sent while L led" if the last status answered before
    it was sent and the first one requested after it was sent both say leader, old term."""

    def __init__(self, sc: Scenario, facts: Facts):
        self.sc, self.facts = sc, facts
        self.samples: list[tuple[float, float, str, int]] = []

    def sample(self) -> dict | None:
        r = self.sc.probe.call("local_status", target=self.sc.addr[self.facts.leader],
                               timeout=1.0)
        v = r["value"]["replicas"][SHARD] if r["ok"] else None
        self.samples.append((r["t0"], r["t1"], v["role"] if v else "no answer",
                             v["term"] if v else -1))
        return v

    def leading_around(self, t: float) -> bool:
        before_s = [s for s in self.samples if s[1] <= t]
        after_s = [s for s in self.samples if s[0] >= t]
        return bool(before_s and after_s
                    and all(s[2] == "leader" and s[3] == self.facts.term
                            for s in (before_s[-1], after_s[0])))

    def first_step_down(self) -> float | None:
        return next((s[0] for s in self.samples if s[2] != "leader"), None)


def run_scenario(sc: Scenario) -> None:
    facts = Facts(wf_a=workflow_id_on(sc.rng, SHARD, "a"), wf_b=workflow_id_on(sc.rng, SHARD, "b"))
    start_a_through_leader(sc, facts)                   # 1
    isolate_leader(sc, facts)                           # 2
    write_through_majority(sc, facts)                   # 3
    checked = read_through_isolated_leader(sc, facts)   # 4
    assert_reads_safe(sc, facts, checked)
    heal_and_read_fresh(sc, facts)                      # 5


def start_a_through_leader(sc: Scenario, facts: Facts) -> None:
    """1. L leads S; A starts through L."""
    facts.leader = leader = sc.leader_of_shard()
    before = sc.local(leader)
    facts.term = before["term"]
    sc.note(f"shard {SHARD} leader is node {leader} ({sc.addr[leader]}), term {before['term']}")
    r = check_ok(sc.probe.call("start", target=sc.addr[leader], workflow_type="stale",
                               workflow_id=facts.wf_a, timeout=10.0), "start A through L")
    assert r["started"], r
    facts.run_a1 = r["run_id"]
    sc.note(f"A={facts.wf_a} started through L: run a1={facts.run_a1}")


def isolate_leader(sc: Scenario, facts: Facts) -> None:
    """2. Partition: L <-/-> majority."""
    sc.net.isolate(facts.leader)
    facts.t_iso = time.monotonic()
    sc.note(f"isolated node {facts.leader} from nodes {facts.majority}")


def write_through_majority(sc: Scenario, facts: Facts) -> None:
    """3. The majority elects M and acknowledges B and A's second run."""
    probe, addr, majority = sc.probe, sc.addr, facts.majority

    def new_leader():
        for i in majority:
            v = sc.local(i, timeout=1.0)
            if v and v["role"] == "leader" and v["term"] > facts.term:
                return (i, v["term"])
        return None
    new, new_term = sc.wait_for("a new leader on the majority side", new_leader, 20.0)
    sc.note(f"node {new} leads shard {SHARD} in term {new_term} "
            f"({time.monotonic() - facts.t_iso:.2f} s after the cut)")
    r = check_ok(probe.call("start", target=addr[new], workflow_type="stale",
                            workflow_id=facts.wf_b, retry=True, timeout=15.0),
                 "start B through M")
    assert r["started"], r
    facts.run_b = r["run_id"]
    r = check_ok(probe.call("start", target=addr[new], workflow_type="stale",
                            workflow_id=facts.wf_a, reuse_policy="TERMINATE_IF_RUNNING",
                            retry=True, timeout=15.0),
                 "restart A through M")
    assert r["started"], r
    facts.run_a2 = r["run_id"]
    assert facts.run_a2 != facts.run_a1
    sc.note(f"through M: B={facts.wf_b} run={facts.run_b}; A restarted run a2={facts.run_a2}")
    other = next(i for i in majority if i != new)
    for wf, run in ((facts.wf_b, facts.run_b), (facts.wf_a, facts.run_a2)):
        r = check_ok(probe.call("describe", target=addr[other], workflow_id=wf, retry=True,
                                timeout=15.0), f"describe {wf} through the majority")
        assert r["run_id"] == run, r


def read_through_isolated_leader(sc: Scenario, facts: Facts) -> list[tuple]:
    """4. Read through L while L still reports itself leader of S. Returns one
    (label, verdict, L led around it, result) per read."""
    timeline = LeaderTimeline(sc, facts)
    reads = send_read_rounds(sc, facts, timeline)
    # Keep sampling L's role until every read has an answer.
    while not all(sc.probe.done(rid) for rid, _ in reads):
        timeline.sample()
        time.sleep(0.2)
    step_down = timeline.first_step_down()
    if step_down is not None:
        sc.note(f"L first reported role != leader {step_down - facts.t_iso:.2f} s after the cut")

    checked = []
    for rid, wf in reads:
        result = sc.probe.result(rid)
        l_leading = timeline.leading_around(result["t0"])
        verdict = classify(result, facts.expected[wf])
        label = facts.label(wf)
        sc.note(f"read {label} via L sent +{result['t0'] - facts.t_iso:.2f} s after the cut: "
                f"{verdict}: {describe_outcome(result)}; L led around it: {l_leading}")
        checked.append((label, verdict, l_leading, result))
    return checked


def send_read_rounds(sc: Scenario, facts: Facts,
                     timeline: LeaderTimeline) -> list[tuple[int, str]]:
    """Rounds of reads of B and A through L, while L says it leads and its fallback is not
    near. Returns (probe request id, workflow id) per read."""
    reads: list[tuple[int, str]] = []
    rounds = 0
    while rounds < READ_ROUNDS_MAX:
        if time.monotonic() - facts.t_iso > FALLBACK_S - READ_WINDOW_MARGIN_S:
            break
        v = timeline.sample()
        if not v or v["role"] != "leader":
            break
        for wf in (facts.wf_b, facts.wf_a):
            reads.append((sc.probe.submit("describe", target=sc.addr[facts.leader],
                                          workflow_id=wf, timeout=READ_DEADLINE_S), wf))
        rounds += 1
        sc.note(f"read round {rounds} sent to L (L says role={v['role']} term={v['term']}, "
                f"{time.monotonic() - facts.t_iso:.2f} s after the cut)")
        gap_end = time.monotonic() + READ_ROUND_GAP_S
        while time.monotonic() < gap_end:
            timeline.sample()
            time.sleep(0.2)
    assert rounds > 0, ("L stopped reporting leader before any read was sent; the window "
                        "was missed\n" + sc.diagnostics())
    return reads


def assert_reads_safe(sc: Scenario, facts: Facts, checked: list[tuple]) -> None:
    stale = [c for c in checked if c[1] == "stale"]
    assert not stale, ("STALE READ from the isolated old leader:\n" + "\n".join(
        f"  {label}: {describe_outcome(res)}" for label, _, _, res in stale)
        + f"\nexpected B run {facts.run_b}, A run {facts.run_a2} (A's old run {facts.run_a1})\n"
        + sc.diagnostics())
    unexpected = [c for c in checked if c[1] == "unexpected"]
    assert not unexpected, ("unexpected answers from L: " + "; ".join(
        describe_outcome(res) for *_, res in unexpected) + "\n" + sc.diagnostics())
    assert any(c[2] for c in checked), ("no read went to L while it reported itself leader\n"
                                        + sc.diagnostics())


def heal_and_read_fresh(sc: Scenario, facts: Facts) -> None:
    """5. Heal: L converges and, through L, B and A read fresh."""
    leader, addr = facts.leader, sc.addr
    sc.net.heal()
    t_heal = time.monotonic()
    sc.note("healed")

    def converged():
        views = [sc.local(i) for i in range(3)]
        if not all(views):
            return None
        leaders = [i for i, v in enumerate(views) if v["role"] == "leader"]
        if (len(leaders) == 1 and leaders[0] != leader
                and len({v["applied_index"] for v in views}) == 1
                and len({v["term"] for v in views}) == 1
                and views[leader]["leader"] == addr[leaders[0]]):
            return views
        return None
    # Up to tens of seconds: a Raft link whose SYN was dropped comes back only at the
    # kernel's next SYN retransmission (pysyncobj never times out a connect in progress).
    views = sc.wait_for("convergence after the heal", converged, 45.0, 0.2)
    sc.note(f"converged {time.monotonic() - t_heal:.2f} s after the heal: L is "
            f"{views[leader]['role']} in term {views[leader]['term']}, applied index "
            f"{views[leader]['applied_index']} on every replica")
    for wf, run in facts.expected.items():
        r = check_ok(sc.probe.call("describe", target=addr[leader], workflow_id=wf, retry=True,
                                   timeout=15.0), f"describe {wf} through L after the heal")
        assert r["run_id"] == run, (r, sc.diagnostics())
    r = check_ok(sc.probe.call("describe", target=addr[leader], workflow_id=facts.wf_a,
                               run_id=facts.run_a1, retry=True, timeout=15.0),
                 "describe A's old run through L")
    assert r["status"] == "TERMINATED", r
    sc.note("through L after the heal: B and A's new run read fresh; A's old run is TERMINATED")
