"""The pure parts of health reporting: a node's health statuses from its replicas'
states (flow/health.py), and the problems `coda cluster status` flags (client/cli_cluster.py).
The real-cluster tests are in integration/test_health.py."""

from __future__ import annotations

from coda.client.cli_cluster import FLOW_HEALTH_SERVICE, assess, summary
from coda.flow.health import FLOW_SERVICE, NOT_SERVING, OVERALL, SERVING, verdict

UP = {"running": True, "has_quorum": True}
CUT_OFF = {"running": True, "has_quorum": False}
DEAD = {"running": False, "has_quorum": False}


def test_the_cli_checks_the_service_the_node_serves():
    assert FLOW_HEALTH_SERVICE == FLOW_SERVICE == "coda.api.v1.Flow"


def test_health_verdicts():
    assert verdict([UP, UP], draining=False) == {OVERALL: SERVING, FLOW_SERVICE: SERVING}
    # One shard with a quorum is enough to serve; none: up but not ready.
    assert verdict([CUT_OFF, UP], draining=False) == {OVERALL: SERVING, FLOW_SERVICE: SERVING}
    assert verdict([CUT_OFF, CUT_OFF], draining=False) == {OVERALL: SERVING,
                                                           FLOW_SERVICE: NOT_SERVING}
    # A dead tick thread or a stopping node: nothing serves.
    assert verdict([UP, DEAD], draining=False) == {OVERALL: NOT_SERVING,
                                                   FLOW_SERVICE: NOT_SERVING}
    assert verdict([UP, UP], draining=True) == {OVERALL: NOT_SERVING, FLOW_SERVICE: NOT_SERVING}
    assert verdict([], draining=False)[OVERALL] == NOT_SERVING


def replica(node, role="follower", commit=100, applied=100, reachable=True):
    return {"node_id": node, "address": f"127.0.0.1:{7100 + int(node[1:])}", "role": role,
            "term": 2, "commit_index": commit, "applied_index": applied, "log_length": 1,
            "leader": None, "reachable": reachable}


def shard(n, leader, replicas):
    return {"shard": n, "leader": leader, "queue_depths": {}, "replicas": replicas}


def status(*shards):
    return {"shard_count": len(shards), "answered_by": "n1", "shards": list(shards)}


def test_a_healthy_cluster_has_no_problems():
    st = assess(status(shard(0, "127.0.0.1:7101", [replica("n1", "leader"), replica("n2"),
                                                      replica("n3", applied=90)])), 50)
    assert st["healthy"] and st["unreachable_nodes"] == [] and st["lag_threshold"] == 50
    assert st["shards"][0]["problems"] == []
    assert [r["lag"] for r in st["shards"][0]["replicas"]] == [0, 0, 10]
    assert summary(st).startswith("OK: 1 shards with a leader, 3 nodes reachable")


def test_no_leader_lagging_and_unreachable_are_flagged():
    st = assess(status(
        shard(0, None, [replica("n1", "candidate"), replica("n2"),
                        replica("n3", "unreachable", 0, 0, reachable=False)]),
        shard(1, "127.0.0.1:7102", [replica("n1", applied=40), replica("n2", "leader", 100, 100),
                                    replica("n3", "unreachable", 0, 0, reachable=False)]),
    ), 50)
    assert not st["healthy"] and st["unreachable_nodes"] == ["n3"]
    assert st["shards"][0]["problems"] == [
        {"kind": "NO_LEADER", "claiming": 0},
        {"kind": "UNREACHABLE", "node_id": "n3", "address": "127.0.0.1:7103"}]
    assert st["shards"][1]["problems"] == [
        {"kind": "LAGGING", "node_id": "n1", "lag": 60},
        {"kind": "UNREACHABLE", "node_id": "n3", "address": "127.0.0.1:7103"}]
    # Without a leader there is nothing to lag behind; unreachable replicas have no lag.
    assert [r["lag"] for r in st["shards"][0]["replicas"]] == [None, None, None]
    assert [r["lagging"] for r in st["shards"][1]["replicas"]] == [True, False, False]
    assert summary(st) == ("PROBLEMS: 1 shard(s) without a leader (0); 1 lagging replica(s) "
                           "(shard 1 on n1); unreachable node(s): n3")


def test_lag_at_the_threshold_is_not_flagged():
    st = assess(status(shard(0, "127.0.0.1:7101", [replica("n1", "leader"),
                                                   replica("n2", applied=50)])), 50)
    assert st["healthy"], st
