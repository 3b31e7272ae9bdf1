"""kill -9 of a shard leader under a stream of starts: measured failover, nothing acked lost.

Writers (one thread per shard, each with its own SyncClient and its retries) start
workflows through the two nodes that survive. The leader of one shard is killed with
SIGKILL mid-stream. Measured and printed (pytest -s), and written to failover.json:
  - kill -> a new leader of the shard is visible in cluster status,
  - kill -> the first start on that shard acknowledged after the kill.
The victim is restarted while the writers go on; once they stop and the replicas
converge, every acknowledged start must be there with its acknowledged run id (describe,
through every node), no workflow id may have two runs, and, once the nodes are stopped,
the three LMDB replicas of every shard must be identical.
"""

import json
import time

import pytest

from coda.errors import CodaError
from harness import StartStream, describe_many

pytestmark = pytest.mark.cluster

SHARDS = 3
SHARD = 0                  # the shard whose leader is killed
WARMUP_ACKS = 20           # per shard, before the kill
AFTER_ACKS = 30            # on the victim's shard after the failover
FAILOVER_BUDGET_S = 20.0   # election timeouts are 1.5-3 s; generous for a loaded machine


def wait_new_leader(cluster, shard: int, victim: int, via: list, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = cluster.status(via)["shards"][shard]
            if last["leader"] and cluster.node_index(last["leader"]) != victim:
                return cluster.node_index(last["leader"])
        except CodaError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"shard {shard} has no new leader {timeout_s} s after the kill: {last}")


def test_leader_kill_mid_stream(make_cluster, tmp_path):
    cluster = make_cluster(shards=SHARDS)
    cluster.start()
    cluster.wait_leaders()
    victim = cluster.leader_node(SHARD)
    survivors = [i for i in range(3) if i != victim]
    stream = StartStream(cluster, cluster.address_of(survivors), "fo").start()
    try:
        timing = kill_and_restart_victim(cluster, stream, victim, survivors)
    finally:
        stream.stop()
    write_report(cluster, stream, victim, timing, tmp_path)

    assert not stream.errors, stream.errors[:10]
    converged = cluster.wait_converged(timeout_s=90)
    cluster.assert_alive()

    acked = dict(stream.acked)
    assert_acked_through_every_node(cluster, acked)
    assert_listing_matches(cluster, acked, stream.unknown)
    assert_replicas_identical(cluster, acked, converged)


def kill_and_restart_victim(cluster, stream, victim: int, survivors: list) -> dict:
    """With the writers going: warm up, SIGKILL the victim, measure the failover, then
    restart the victim. Returns the new leader and the measured instants."""
    for shard in range(SHARDS):
        stream.wait_acks(WARMUP_ACKS, shard=shard)

    killed_at = time.monotonic()
    cluster.kill(victim)
    new_leader = wait_new_leader(cluster, SHARD, victim, survivors, FAILOVER_BUDGET_S)
    leader_at = time.monotonic()
    first_ack_at = stream.wait_acks(1, shard=SHARD, after=killed_at,
                                    timeout_s=FAILOVER_BUDGET_S)[0][0]
    stream.wait_acks(AFTER_ACKS, shard=SHARD, after=killed_at)
    for shard in range(SHARDS):  # every shard keeps taking starts without the victim
        stream.wait_acks(10, shard=shard, after=leader_at)
    cluster.assert_alive(survivors)

    cluster.start(victim)  # rejoins while the writers keep going
    restarted_at = time.monotonic()
    for shard in range(SHARDS):
        stream.wait_acks(10, shard=shard, after=restarted_at)
    return {"new_leader": new_leader, "killed_at": killed_at, "leader_at": leader_at,
            "first_ack_at": first_ack_at}


def write_report(cluster, stream, victim: int, timing: dict, tmp_path) -> None:
    killed_at = timing["killed_at"]
    report = {
        "shards": SHARDS, "shard": SHARD, "victim": cluster.nodes[victim]["id"],
        "new_leader": cluster.nodes[timing["new_leader"]]["id"],
        "kill_to_new_leader_s": round(timing["leader_at"] - killed_at, 3),
        "kill_to_first_ack_s": round(timing["first_ack_at"] - killed_at, 3),
        "acked": len(stream.acked), "unknown": len(stream.unknown),
        "acked_on_shard_before_kill": len(stream.acks(SHARD)) - len(stream.acks(SHARD, killed_at)),
        "acked_on_shard_after_kill": len(stream.acks(SHARD, killed_at)),
    }
    path = tmp_path / "failover.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nfailover: kill -> new leader {report['kill_to_new_leader_s']:.3f} s, "
          f"kill -> first acknowledged start {report['kill_to_first_ack_s']:.3f} s "
          f"({report['acked']} acked, {report['unknown']} unknown); written to {path}")


def assert_acked_through_every_node(cluster, acked: dict) -> None:
    # Every acknowledged start, through every node (reads are barriers on the leader).
    for i in range(3):
        answers = describe_many(cluster.nodes[i]["client"], sorted(acked))
        wrong = {wid: a for wid, a in answers.items()
                 if isinstance(a, Exception) or a["run_id"] != acked[wid][0]
                 or a["status"] != "RUNNING"}
        assert not wrong, f"via {cluster.nodes[i]['id']}: {len(wrong)} acked starts wrong: " \
                          f"{list(wrong.items())[:5]}"


def assert_listing_matches(cluster, acked: dict, unknown: set) -> None:
    with cluster.client() as c:
        listed = [w["workflow_id"] for w in c.list_all(page_size=1000)]
    assert len(listed) == len(set(listed))
    assert set(acked) <= set(listed)
    assert set(listed) <= set(acked) | unknown  # nothing appeared from nowhere


def assert_replicas_identical(cluster, acked: dict, converged) -> None:
    cluster.wait_converged(timeout_s=60)
    cluster.stop()
    digests = cluster.digests()
    assert all(len(set(d)) == 1 for d in digests.values()), (digests, converged)
    runs = cluster.stored_runs(0)
    for wid, info in runs.items():
        assert not info["closed_runs"] and len(info["history_runs"]) == 1, (wid, info)
        if wid in acked:
            assert info["current"] == acked[wid][0] and info["history_runs"] == {acked[wid][0]}
    assert set(acked) <= set(runs)
