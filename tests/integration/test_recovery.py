"""Recovery after kill -9 from what is on disk: Raft journal + snapshot, and LMDB.

Compaction is forced early (raft.log_compaction_min_entries = 50), so every replica has
written snapshots and cut its journal before it is killed: a restart loads its snapshot
and replays the journal after it, with LMDB already holding some of those entries (they
must be skipped) and not others (they must be applied).

1. One node is killed mid-stream and restarted: its replicas reach the same applied index
   as the others, and, once stopped, identical LMDB contents.
2. All three nodes are killed at once mid-stream and restarted: every acknowledged start
   is there, and starts acknowledged after the restart are there too (new entries must
   not be mistaken for replays and skipped).
"""

import os
import signal
import time

import pytest

from coda.errors import CodaError
from harness import StartStream, describe_many, journal_indexes, snapshot_point

pytestmark = pytest.mark.cluster

SHARDS = 2
COMPACTION = {"log_compaction_min_entries": 50}


def check_acked(cluster, acked: dict, via: int | None = None) -> None:
    """Every acknowledged start answers describe with its acknowledged run id."""
    address = cluster.address if via is None else cluster.nodes[via]["client"]
    answers = describe_many(address, sorted(acked))
    wrong = {w: a for w, a in answers.items()
             if isinstance(a, Exception) or a["run_id"] != acked[w][0]}
    assert not wrong, f"{len(wrong)} of {len(acked)} acked starts wrong: {list(wrong.items())[:5]}"


def check_stopped_cluster(cluster, acked: dict, unknown: set) -> None:
    digests = cluster.digests()
    assert all(len(set(d)) == 1 for d in digests.values()), digests
    runs = cluster.stored_runs(0)
    for wid, info in runs.items():
        assert wid in acked or wid in unknown, f"{wid} was never started: {info}"
        assert not info["closed_runs"] and len(info["history_runs"]) == 1, (wid, info)
    for wid, (run_id, *_) in acked.items():
        assert wid in runs and runs[wid]["current"] == run_id, (wid, run_id, runs.get(wid))


def wait_snapshots_written(cluster, i: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        written = [cluster.metric(i, "coda_shard_snapshots_written_total", shard=s)
                   for s in range(cluster.shards)]
        if all(w >= 1 for w in written):
            return
        assert time.monotonic() < deadline, f"node {i} wrote snapshots {written}"
        time.sleep(0.2)


def test_one_node_kill9_recovers(make_cluster):
    cluster = make_cluster(shards=SHARDS, raft=COMPACTION)
    cluster.start()
    leaders = cluster.leaders()
    victim = leaders[0]  # leads a shard: a kill also forces a failover
    others = [i for i in range(3) if i != victim]
    stream = StartStream(cluster, cluster.address_of(others), "one").start()
    try:
        stream.wait_acks(120)
        wait_snapshots_written(cluster, victim)
        log_before = len(cluster.read_log(victim))
        cluster.kill(victim)
        stream.wait_acks(20, after=time.monotonic())
        cluster.start(victim)
        cluster.wait_leaders()
        stream.wait_acks(40, after=time.monotonic())
    finally:
        stream.stop()
    assert not stream.errors, stream.errors[:5]
    status = cluster.wait_converged(timeout_s=90)
    cluster.assert_alive()
    for shard in status["shards"]:
        applied = [r["applied_index"] for r in shard["replicas"]]
        assert len(set(applied)) == 1 and applied[0] > 50, shard
    log = cluster.read_log(victim)[log_before:]
    assert "Traceback" not in log and "CRITICAL" not in log, log[-3000:]
    check_acked(cluster, stream.acked, via=victim)
    cluster.wait_converged()
    cluster.stop()
    check_stopped_cluster(cluster, stream.acked, stream.unknown)


def test_all_nodes_kill9_at_once_recover(make_cluster):
    cluster = make_cluster(shards=SHARDS, raft=COMPACTION)
    cluster.start()
    cluster.wait_leaders()
    stream = StartStream(cluster, cluster.address, "all", timeout_s=90.0).start()
    try:
        stream.wait_acks(150)
        for i in range(3):
            wait_snapshots_written(cluster, i)
        killed_at = time.monotonic()
        cluster.kill_all()
        acked_before_kill = {w: a for w, a in stream.acked.items() if a[3] <= killed_at}
        cluster.start()
        cluster.wait_leaders(timeout_s=60)
        restarted_at = time.monotonic()
        cluster.assert_alive()
        # Starts keep working after the restart, on every shard.
        for shard in range(SHARDS):
            stream.wait_acks(25, shard=shard, after=restarted_at)
    finally:
        stream.stop()
    assert not stream.errors, stream.errors[:5]
    assert len(acked_before_kill) >= 150
    acked = dict(stream.acked)
    after = [w for _, w in stream.acks(after=restarted_at)]
    # Read back right away, through every node: the new starts are visible.
    for i in range(3):
        check_acked(cluster, {w: acked[w] for w in after}, via=i)
    check_acked(cluster, acked)
    with cluster.client() as c:
        listed = [w["workflow_id"] for w in c.list_all(page_size=1000)]
    assert set(acked) <= set(listed) <= set(acked) | stream.unknown
    status = cluster.wait_converged(timeout_s=90)
    cluster.assert_alive()
    for shard in status["shards"]:
        assert len({r["applied_index"] for r in shard["replicas"]}) == 1, shard
    cluster.stop()
    check_stopped_cluster(cluster, acked, stream.unknown)


def stop_on_next_snapshot(cluster, i: int, shard: int, timeout_s: float) -> None:
    """SIGSTOP node i right after its replica of `shard` logs that it wrote a snapshot."""
    marker = f"shard {shard}: snapshot written at applied index".encode()
    path = cluster.log_path(i)
    with open(path, "rb") as f:
        f.seek(0, 2)
        deadline = time.monotonic() + timeout_s
        tail = b""
        while time.monotonic() < deadline:
            tail = tail[-200:] + f.read()
            if marker in tail:
                cluster.kill(i, signal.SIGSTOP)
                return
            time.sleep(0.0005)
    raise AssertionError(f"node {i} wrote no snapshot of shard {shard} in {timeout_s} s")


def test_kill9_between_snapshot_and_journal_cut(make_cluster):
    """A crash after a snapshot file is renamed into place but before the journal is cut
    to it must not lose the journal entries after the snapshot: this follower acknowledged
    them (the leader counted it toward their commit)."""
    cluster = make_cluster(shards=SHARDS, raft=COMPACTION)
    cluster.start()
    leaders = cluster.leaders()
    shard = 0
    victim = next(i for i in range(3) if i != leaders[shard])
    others = [i for i in range(3) if i != victim]
    journal = os.path.join(cluster.shard_dir(victim, shard), "raft.journal")
    snapshot = os.path.join(cluster.shard_dir(victim, shard), "raft.snapshot")
    stream = StartStream(cluster, cluster.address_of(others), "cut").start()
    try:
        stream.wait_acks(60)
        for attempt in range(60):
            stop_on_next_snapshot(cluster, victim, shard, timeout_s=30)
            if not os.path.exists(snapshot):
                # Stopped after our serializer logged but before pysyncobj renamed its
                # first snapshot into place: not the window this test is after.
                cluster.kill(victim, signal.SIGCONT)
                continue
            entries = journal_indexes(journal)
            _, last_in_snapshot = snapshot_point(snapshot)
            if entries[0][0] < last_in_snapshot - 1 and entries[-1][0] > last_in_snapshot:
                break  # stopped inside the window, with entries after the snapshot
            cluster.kill(victim, signal.SIGCONT)
        else:
            raise AssertionError("never stopped the victim between snapshot and journal cut")
        cluster.kill(victim)
    finally:
        stream.stop()
    assert not stream.errors, stream.errors[:5]
    held = entries[-1][0]

    # Restart the victim alone (the others paused, so nobody can hand it entries back).
    for i in others:
        cluster.kill(i, signal.SIGSTOP)
    cluster.start(victim)
    deadline = time.monotonic() + 30
    while True:  # until the replica has ticked with its transport up: snapshot loaded
        assert time.monotonic() < deadline and cluster.alive(victim), cluster.read_log(victim)[-2000:]
        try:
            replicas = cluster.status(victim)["shards"][shard]["replicas"]
            if replicas[victim]["log_length"] > 0:
                break
        except CodaError:
            pass
        time.sleep(0.1)
    cluster.stop(victim)
    after = journal_indexes(journal)
    for i in others:
        cluster.kill(i, signal.SIGCONT)
    print(f"\nstopped at attempt {attempt + 1}: snapshot at {last_in_snapshot}, journal "
          f"{entries[0][0]}..{held} before the kill, {after[0][0]}..{after[-1][0]} after restart")
    assert after[-1][0] >= held, (
        f"the restarted follower lost acknowledged journal entries {after[-1][0] + 1}..{held} "
        f"(snapshot at {last_in_snapshot})")

    cluster.start(victim)
    cluster.wait_converged(timeout_s=90)
    cluster.assert_alive()
    check_acked(cluster, stream.acked)
    cluster.wait_converged()
    cluster.stop()
    check_stopped_cluster(cluster, stream.acked, stream.unknown)
