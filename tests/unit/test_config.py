"""Node configuration is validated with errors that name the field."""

import dataclasses

import pytest

from coda.errors import ConfigError
from coda.flow import config


def good(**over) -> dict:
    raw = {
        "node_id": "n1", "data_dir": "/tmp/x", "shards": 4, "secret": "s" * 32,
        "nodes": [{"id": f"n{i}", "client": f"127.0.0.1:{7100 + i}", "raft": f"127.0.0.1:{7200 + 100 * i}",
                   "metrics": f"127.0.0.1:{7110 + i}"} for i in (1, 2, 3)],
    }
    raw.update(over)
    return raw


def test_good_config_round_trips():
    cfg = config.from_mapping(good())
    assert cfg.me.id == "n1" and len(cfg.peers()) == 2
    assert config.from_mapping(config.to_mapping(cfg)) == cfg
    assert cfg.me.raft_address(3) == "127.0.0.1:7303"


@pytest.mark.parametrize("over, field", [
    ({"shards": 0}, "shards"),
    ({"shards": 10_000}, "shards"),
    ({"secret": "short"}, "secret"),
    ({"secret": ""}, "secret"),
    ({"node_id": "n9"}, "node_id"),
    ({"data_dir": ""}, "data_dir"),
    ({"bogus": 1}, "bogus"),
    ({"raft": {"election_timeout_min_s": 3.0, "election_timeout_max_s": 1.0}}, "raft.election_timeout_max_s"),
    ({"raft": {"election_timeout_min_s": 0.05}}, "raft.election_timeout_min_s"),
    ({"raft": {"leader_fallback_timeout_s": 0.5}}, "raft.leader_fallback_timeout_s"),
    ({"raft": {"append_entries_period_s": -1}}, "raft.append_entries_period_s"),
    ({"raft": {"no_such": 1}}, "raft"),
    ({"raft": {"connection_timeout_s": 1.5}}, "raft.connection_timeout_s"),
    ({"payload_bytes_max": 10}, "payload_bytes_max"),
])
def test_bad_values_name_the_field(over, field):
    with pytest.raises(ConfigError) as info:
        config.from_mapping(good(**over))
    assert info.value.details.get("field") == field, info.value.message


def test_port_clashes_and_bad_addresses():
    raw = good()
    raw["nodes"][1]["client"] = raw["nodes"][0]["client"]
    with pytest.raises(ConfigError, match="also used by"):
        config.from_mapping(raw)
    raw = good()
    raw["nodes"][1]["raft"] = "127.0.0.1:7102"  # overlaps node 1's metrics? no: its raft range
    raw["nodes"][0]["raft"] = "127.0.0.1:7100"  # shard ports 7100-7103 hit n1's client port
    with pytest.raises(ConfigError, match="also used by"):
        config.from_mapping(raw)
    for bad in ("nohost", "127.0.0.1:http", ":7100", "127.0.0.1:70000"):
        raw = good()
        raw["nodes"][2]["client"] = bad
        with pytest.raises(ConfigError, match="nodes\\[n3\\].client"):
            config.from_mapping(raw)
    raw = good()
    raw["nodes"][0]["raft"] = "0.0.0.0:7200"
    with pytest.raises(ConfigError, match="wildcard"):
        config.from_mapping(raw)


def test_timing_defaults_are_valid_and_deliberate():
    t = config.RaftTiming()
    config._validate_timing(t)
    assert t.leader_fallback_timeout_s < 30, "pysyncobj's 30 s default keeps stale leaders"
    assert dataclasses.replace(t) == t


def test_each_shard_prefers_one_leader_and_preferences_spread_over_the_nodes():
    """flow.replica.election_timeouts_s: for every shard exactly one replica draws from the
    lower half of the election range (the one a cluster started together elects), and
    with 6 shards on 3 nodes each node is preferred for 2 of them."""
    from coda.flow.replica import election_timeouts_s
    t = config.RaftTiming()
    middle_s = (t.election_timeout_min_s + t.election_timeout_max_s) / 2
    preferred = {}
    for node_id in ("n1", "n2", "n3"):
        cfg = config.from_mapping(good(node_id=node_id, shards=6))
        for shard in range(6):
            low_s, high_s = election_timeouts_s(cfg, shard)
            assert t.election_timeout_min_s <= low_s < high_s <= t.election_timeout_max_s
            if high_s <= middle_s:
                preferred.setdefault(shard, []).append(node_id)
            else:
                assert low_s >= middle_s
    assert sorted(preferred) == list(range(6))
    assert all(len(nodes) == 1 for nodes in preferred.values())
    leaders = [nodes[0] for nodes in preferred.values()]
    assert sorted(leaders.count(n) for n in ("n1", "n2", "n3")) == [2, 2, 2]
