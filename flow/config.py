"""Configuration of a Flow node and its cluster, validated at start-up.

A cluster is a list of nodes; each node has a client (gRPC) address, a Raft host and a Raft
base port (shard s of that node listens on raft_port_base + s), and a metrics address.
Every pysyncobj, LMDB and gRPC option we depend on is set here or in flow.replica's
`raft_conf`, never left to a library default. `validate()` checks each value and how
values relate (election timeout well above the append period, ...) and raises ConfigError
naming the field.

Config file: TOML, e.g.

    node_id = "n1"
    data_dir = "/var/lib/coda"
    shards = 8
    secret_file = "/etc/coda/secret"
    [[nodes]]
    id = "n1"; client = "10.0.0.1:7100"; raft = "10.0.0.1:7200"; metrics = "10.0.0.1:7110"
    ...
    [raft]          # optional overrides of RaftTiming
    election_timeout_min_s = 1.5
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from coda.errors import ConfigError
from coda.flow import limits


@dataclass(frozen=True)
class NodeAddress:
    id: str
    client: str            # host:port of the gRPC API
    raft: str              # host:port; shard s listens on port + s
    metrics: str           # host:port of the Prometheus endpoint

    def raft_address(self, shard: int) -> str:
        host, port = split_host_port(self.raft, f"nodes[{self.id}].raft")
        return f"{host}:{port + shard}"


@dataclass(frozen=True)
class RaftTiming:
    """pysyncobj timing, chosen deliberately (shared/notes/pysyncobj.md)."""
    # Elections: 1.5-3 s once removed spurious elections under load on this 2-core
    # machine, when the journal's msync held the GIL and stalled tick threads; with the
    # flush off the GIL (flow.raft_base) 1-2 s holds, and a leader's kill -9 reaches the
    # next commit in ~1.5-2.5 s (bench/bench_perf.py failover row).
    election_timeout_min_s: float = 1.0
    election_timeout_max_s: float = 2.0
    # An isolated leader steps down after this; reads never rely on it (they use a barrier).
    leader_fallback_timeout_s: float = 3.0
    # A proposal wakes the tick thread (flow.raft_base, 8) and new entries are sent at
    # once, so neither period adds latency: the append period is the heartbeat (and how
    # late an idle follower learns the last commit), the tick the resolution of timers.
    # Ticks of 5 ms burned ~0.2 cores on an idle 4-shard node; bench/bench_execution.py.
    append_entries_period_s: float = 0.1
    auto_tick_period_s: float = 0.05
    connection_timeout_s: float = 3.5
    connection_retry_s: float = 0.5
    # Log compaction (snapshot) triggers; tests lower them to force snapshot installs.
    log_compaction_min_entries: int = 5000
    log_compaction_min_time_s: float = 300.0
    # The leader runs each command once and replicates what it wrote (flow.speculation);
    # false: every replica runs every command (the baseline bench/bench_perf.py compares).
    replicate_write_sets: bool = True
    # A leader answers an entry's proposer once the entry is committed (durable in a
    # majority of journals), before LMDB's commit of it (flow.replica, CommittedView);
    # false: after that commit, as before (for A/B benches).
    answer_before_lmdb_commit: bool = True
    # A leader sends a new run's first workflow task to its supervisor when the start is
    # appended to the log, not once it commits (flow.speculation); false: at the commit.
    dispatch_before_commit: bool = True


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: str
    shards: int
    secret: str
    nodes: tuple[NodeAddress, ...]
    raft: RaftTiming = field(default_factory=RaftTiming)
    payload_bytes_max: int = limits.payload_bytes_default
    supervisor_lease_ms: int = limits.supervisor_lease_ms_default
    # Every node of a cluster should say the same; the leader stamps its own into commands.
    history_events_per_run_max: int = limits.history_events_per_run_default
    history_bytes_per_run_max: int = limits.history_bytes_per_run_default

    def history_limit(self) -> dict:
        """What the leader stamps into commands that grow a history (flow.sm_common)."""
        return {"events": self.history_events_per_run_max,
                "bytes": self.history_bytes_per_run_max}

    @property
    def me(self) -> NodeAddress:
        return next(n for n in self.nodes if n.id == self.node_id)

    def peers(self) -> tuple[NodeAddress, ...]:
        return tuple(n for n in self.nodes if n.id != self.node_id)

    def node_by_raft_address(self, shard: int, raft_address: str) -> NodeAddress | None:
        return next((n for n in self.nodes if n.raft_address(shard) == raft_address), None)

    def shard_dir(self, shard: int) -> str:
        return os.path.join(self.data_dir, self.node_id, f"shard-{shard:03d}")


def split_host_port(value: str, what: str) -> tuple[str, int]:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(f"{what} must be host:port, got {value!r}", field=what)
    host, port_text = value.split(":")
    if not host:
        raise ConfigError(f"{what} has an empty host: {value!r}", field=what)
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} has a non-numeric port: {value!r}", field=what) from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} port {port} is outside 1-65535", field=what)
    return host, port


def validate(cfg: NodeConfig) -> NodeConfig:
    if not cfg.node_id:
        raise ConfigError("node_id must not be empty", field="node_id")
    if not isinstance(cfg.data_dir, str) or not cfg.data_dir:
        raise ConfigError(f"data_dir must be a non-empty path, got {cfg.data_dir!r}",
                          field="data_dir")
    if not isinstance(cfg.shards, int) or not 1 <= cfg.shards <= limits.shards_max:
        raise ConfigError(f"shards must be an integer in 1..{limits.shards_max}, got {cfg.shards!r}",
                          field="shards")
    if not isinstance(cfg.secret, str):
        raise ConfigError(f"the cluster secret must be a string, got {type(cfg.secret).__name__}",
                          field="secret")
    if len(cfg.secret) < 16:
        raise ConfigError("the cluster secret must be at least 16 characters "
                          "(it protects the Raft ports)", field="secret")
    if not 1 <= len(cfg.nodes) <= limits.nodes_max:
        raise ConfigError(f"a cluster has 1..{limits.nodes_max} nodes, got {len(cfg.nodes)}",
                          field="nodes")
    ids = [n.id for n in cfg.nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids must be unique, got {ids}", field="nodes")
    if cfg.node_id not in ids:
        raise ConfigError(f"node_id {cfg.node_id!r} is not among the cluster's nodes {ids}",
                          field="node_id")
    _validate_ports(cfg)
    _validate_timing(cfg.raft)
    if (not isinstance(cfg.payload_bytes_max, int) or isinstance(cfg.payload_bytes_max, bool)
            or not 1024 <= cfg.payload_bytes_max <= limits.payload_bytes_max):
        raise ConfigError(f"payload_bytes_max must be an integer in 1024.."
                          f"{limits.payload_bytes_max}, got {cfg.payload_bytes_max!r}",
                          field="payload_bytes_max")
    if (type(cfg.supervisor_lease_ms) is not int
            or not 500 <= cfg.supervisor_lease_ms <= 3_600_000):
        raise ConfigError("supervisor_lease_ms must be an integer in 500..3600000, got "
                          f"{cfg.supervisor_lease_ms!r}", field="supervisor_lease_ms")
    for name, low, high in (
            ("history_events_per_run_max", limits.history_events_per_run_min,
             limits.history_events_per_run_max),
            ("history_bytes_per_run_max", limits.history_bytes_per_run_min,
             limits.history_bytes_per_run_max)):
        value = getattr(cfg, name)
        if type(value) is not int or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}",
                              field=name)
    return cfg


def _validate_ports(cfg: NodeConfig) -> None:
    taken: dict[tuple[str, int], str] = {}

    def claim(host: str, port: int, what: str) -> None:
        if (host, port) in taken:
            raise ConfigError(f"{what} port {host}:{port} is also used by {taken[(host, port)]}",
                              field=what)
        taken[(host, port)] = what

    for n in cfg.nodes:
        for attr in ("client", "metrics"):
            host, port = split_host_port(getattr(n, attr), f"nodes[{n.id}].{attr}")
            claim(host, port, f"nodes[{n.id}].{attr}")
        host, base = split_host_port(n.raft, f"nodes[{n.id}].raft")
        if base + cfg.shards - 1 > 65535:
            raise ConfigError(f"nodes[{n.id}].raft base port {base} leaves no room for "
                              f"{cfg.shards} shards", field=f"nodes[{n.id}].raft")
        if host in ("0.0.0.0", "::"):
            raise ConfigError(f"nodes[{n.id}].raft must be the node's own address, not a "
                              "wildcard: peers identify each other by it", field="raft")
        for shard in range(cfg.shards):
            claim(host, base + shard, f"nodes[{n.id}].raft (shard {shard})")


def _validate_timing(t: RaftTiming) -> None:
    def positive(name: str) -> float:
        value = getattr(t, name)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"raft.{name} must be a positive number, got {value!r}",
                              field=f"raft.{name}")
        return value

    for f in dataclasses.fields(t):
        if f.type in (bool, "bool"):
            if not isinstance(getattr(t, f.name), bool):
                raise ConfigError(f"raft.{f.name} must be true or false, got "
                                  f"{getattr(t, f.name)!r}", field=f"raft.{f.name}")
        else:
            positive(f.name)
    if t.election_timeout_max_s <= t.election_timeout_min_s:
        raise ConfigError("raft.election_timeout_max_s must exceed election_timeout_min_s",
                          field="raft.election_timeout_max_s")
    # hashicorp/raft's rule: the election timeout must leave room for many heartbeats.
    if t.election_timeout_min_s < 10 * t.append_entries_period_s:
        raise ConfigError("raft.election_timeout_min_s must be at least 10x "
                          "append_entries_period_s, or followers start elections "
                          "between heartbeats", field="raft.election_timeout_min_s")
    if t.leader_fallback_timeout_s < t.election_timeout_min_s:
        raise ConfigError("raft.leader_fallback_timeout_s must be at least "
                          "election_timeout_min_s", field="raft.leader_fallback_timeout_s")
    # pysyncobj asserts this at construction; say it here, naming the field.
    if t.connection_timeout_s < t.election_timeout_max_s:
        raise ConfigError("raft.connection_timeout_s must be at least election_timeout_max_s "
                          "(a peer silent for longer than an election is dropped)",
                          field="raft.connection_timeout_s")
    if t.auto_tick_period_s > t.append_entries_period_s:
        raise ConfigError("raft.auto_tick_period_s must not exceed append_entries_period_s",
                          field="raft.auto_tick_period_s")
    if int(t.log_compaction_min_entries) < 10:
        raise ConfigError("raft.log_compaction_min_entries must be at least 10",
                          field="raft.log_compaction_min_entries")


def read_toml(path: str) -> dict:
    """A config file's settings; a missing or malformed file is a ConfigError."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", field="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", field="config") from None


def from_mapping(raw: dict, origin: str = "config") -> NodeConfig:
    known = {"node_id", "data_dir", "shards", "secret", "secret_file", "nodes", "raft",
             "payload_bytes_max", "supervisor_lease_ms", "history_events_per_run_max",
             "history_bytes_per_run_max"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {', '.join(unknown)}", field=unknown[0])
    try:
        nodes = tuple(NodeAddress(**n) for n in raw.get("nodes", ()))
    except TypeError as exc:
        raise ConfigError(f"{origin}: each [[nodes]] entry needs id, client, raft, metrics "
                          f"and nothing else ({exc})", field="nodes") from None
    try:
        timing = RaftTiming(**raw.get("raft", {}))
    except TypeError as exc:
        raise ConfigError(f"{origin}: bad [raft] section ({exc})", field="raft") from None
    secret = raw.get("secret")
    if raw.get("secret_file"):
        try:
            with open(raw["secret_file"]) as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{origin}: can't read secret_file: {exc}",
                              field="secret_file") from None
    if not secret:
        raise ConfigError(f"{origin}: a cluster secret is required (secret or secret_file)",
                          field="secret")
    cfg = NodeConfig(node_id=str(raw.get("node_id", "")), data_dir=raw.get("data_dir", ""),
                     shards=raw.get("shards", 0), secret=secret, nodes=nodes, raft=timing,
                     payload_bytes_max=raw.get("payload_bytes_max", limits.payload_bytes_default),
                     supervisor_lease_ms=raw.get("supervisor_lease_ms",
                                                 limits.supervisor_lease_ms_default),
                     history_events_per_run_max=raw.get(
                         "history_events_per_run_max", limits.history_events_per_run_default),
                     history_bytes_per_run_max=raw.get(
                         "history_bytes_per_run_max", limits.history_bytes_per_run_default))
    return validate(cfg)


def to_mapping(cfg: NodeConfig) -> dict:
    """The inverse of from_mapping (used by `coda-flow dev` to write node configs)."""
    return {
        "node_id": cfg.node_id, "data_dir": cfg.data_dir, "shards": cfg.shards,
        "secret": cfg.secret, "payload_bytes_max": cfg.payload_bytes_max,
        "supervisor_lease_ms": cfg.supervisor_lease_ms,
        "history_events_per_run_max": cfg.history_events_per_run_max,
        "history_bytes_per_run_max": cfg.history_bytes_per_run_max,
        "nodes": [dataclasses.asdict(n) for n in cfg.nodes],
        "raft": dataclasses.asdict(cfg.raft),
    }
