"""A follower that falls behind past log compaction catches up by a snapshot install.

Compaction is forced early (raft.log_compaction_min_entries = 50). One node that leads no
shard is taken out (SIGKILL, later restarted; or SIGSTOP, later continued) while a few
hundred starts commit without it, so the leaders' logs no longer hold the entries it
misses (SIGSTOP: also past the leaders' connection timeout, or the victim would catch
up from what its socket buffers hold). Once back, it must install a snapshot of every shard (metric and log line), keep
applying new entries after the install, and end with LMDB contents identical to the
other two replicas.
"""

import re
import signal
import time

import pytest

from coda.flow.config import RaftTiming
from harness import describe_many, start_many

pytestmark = pytest.mark.cluster

SHARDS = 2
BEHIND_STARTS = 250
COMPACTION = {"log_compaction_min_entries": 50}


def compaction_lag(cluster, others, applied_before: dict) -> list:
    """Shards whose leader has not yet compacted past what the victim holds."""
    behind = []
    for s in cluster.status(others)["shards"]:
        leader = cluster.node_index(s["leader"]) if s["leader"] else None
        replica = next((r for r in s["replicas"] if r["role"] == "leader"), None)
        if (leader is None or replica is None
                or cluster.metric(leader, "coda_shard_snapshots_written_total",
                                  shard=s["shard"]) < 1
                or replica["log_length"] >= replica["applied_index"] - applied_before[s["shard"]]):
            behind.append(s)
    return behind


def installs(cluster, i: int) -> dict[int, float]:
    return {s: cluster.metric(i, "coda_shard_snapshot_installs_total", shard=s)
            for s in range(cluster.shards)}


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
def test_lagging_follower_gets_snapshot(make_cluster, how):
    cluster = make_cluster(shards=SHARDS, raft=COMPACTION)
    cluster.start()
    leaders = cluster.leaders()
    victim = next(i for i in range(3) if i not in leaders.values())
    others = [i for i in range(3) if i != victim]
    acked = start_many(cluster.address, [f"before-{n}" for n in range(20)])
    cluster.wait_converged()
    assert installs(cluster, victim) == {s: 0.0 for s in range(SHARDS)}
    applied_before = {s["shard"]: s["replicas"][victim]["applied_index"]
                      for s in cluster.status()["shards"]}

    if how == "sigkill":
        cluster.kill(victim)
    else:
        cluster.kill(victim, signal.SIGSTOP)
    acked |= start_many(cluster.address_of(others), [f"behind-{n}" for n in range(BEHIND_STARTS)])
    if how == "sigstop":
        # A stopped process's sockets still take what the leaders send, and pysyncobj
        # sends whole batches ahead: the victim would catch up from its socket buffers.
        # Outlast the leaders' connection timeout so they drop the connection, then
        # commit (and compact) more that only a snapshot can bring.
        time.sleep(RaftTiming().connection_timeout_s + 1.5)
        acked |= start_many(cluster.address_of(others),
                            [f"behind-late-{n}" for n in range(BEHIND_STARTS)])
    # Every shard's leader compacted its log past what the victim holds. Compaction runs in
    # the leader's tick thread after the entries apply, and replica status is published
    # every 0.25 s, so the acks can come before both: wait for them (bounded).
    deadline = time.monotonic() + 20
    while True:
        behind = compaction_lag(cluster, others, applied_before)
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert not behind, behind

    log_offset = len(cluster.read_log(victim))
    if how == "sigkill":
        cluster.start(victim)
    else:
        cluster.kill(victim, signal.SIGCONT)
    cluster.wait_converged(timeout_s=90)
    cluster.assert_alive()
    got = installs(cluster, victim)
    assert all(got[s] >= 1 for s in range(SHARDS)), got
    log = cluster.read_log(victim)[log_offset:]
    installed = set(int(m) for m in re.findall(r"shard (\d+): installed snapshot at applied index", log))
    assert installed == set(range(SHARDS)), log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    # The installed replica keeps applying: new starts through the victim itself.
    acked |= start_many(cluster.nodes[victim]["client"], [f"after-{n}" for n in range(30)])
    answers = describe_many(cluster.nodes[victim]["client"], sorted(acked))
    wrong = {w: a for w, a in answers.items()
             if isinstance(a, Exception) or a["run_id"] != acked[w]}
    assert not wrong, list(wrong.items())[:5]
    cluster.wait_converged()
    cluster.assert_alive()
    cluster.stop()
    digests = cluster.digests()
    assert all(len(set(d)) == 1 for d in digests.values()), digests
    runs = cluster.stored_runs(victim)
    assert {w: r["current"] for w, r in runs.items()} == acked
