"""Prometheus metrics of a Flow node: per shard (label `shard`) and per node.

Replicas push their Raft figures into the gauges from their own tick thread (cheap, every
~0.5 s); queue depths are read from LMDB at scrape time by a collector, so they are exact.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

ROLE_VALUES = {"follower": 0, "candidate": 1, "leader": 2}

raft_role = Gauge("coda_shard_raft_role",
                  "Raft role of this node's replica: 0 follower, 1 candidate, 2 leader",
                  ["shard"])
raft_term = Gauge("coda_shard_raft_term", "Current Raft term of the replica", ["shard"])
commit_index = Gauge("coda_shard_commit_index", "Raft commit index of the replica", ["shard"])
applied_index = Gauge("coda_shard_applied_index", "Last Raft index applied to LMDB", ["shard"])
log_entries = Gauge("coda_shard_log_entries", "Entries in the replica's Raft log", ["shard"])
has_quorum = Gauge("coda_shard_has_quorum", "1 if this replica leads with a quorum", ["shard"])
proposals_in_flight = Gauge("coda_shard_proposals_in_flight",
                            "Commands proposed by this leader and not yet answered", ["shard"])
leader_changes = Counter("coda_shard_leader_changes", "Times the replica saw a new leader",
                         ["shard"])
history_warnings = Counter("coda_shard_history_warnings",
                           "Runs whose history passed the warning share of its limit "
                           "(continue-as-new suggested)", ["shard"])
snapshot_installs = Counter("coda_shard_snapshot_installs",
                            "Snapshots loaded into LMDB (from a leader or at start-up)",
                            ["shard"])
snapshots_written = Counter("coda_shard_snapshots_written",
                            "Snapshots written for log compaction", ["shard"])
apply_batch_entries = Histogram(
    "coda_shard_apply_batch_entries", "Commands applied per LMDB transaction (group commit)",
    ["shard"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000))
apply_batch_seconds = Histogram(
    "coda_shard_apply_batch_seconds", "Time from a batch's first apply to its commit",
    ["shard"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
read_barriers = Counter("coda_shard_read_barriers", "Log barriers committed for reads",
                        ["shard"])
rejected_proposals = Counter("coda_shard_rejected_proposals",
                             "Proposals refused before reaching the log, by reason",
                             ["shard", "reason"])
dispatched = Counter("coda_shard_dispatched", "Workflow tasks and tasks sent to supervisors",
                     ["shard"])
completions = Counter("coda_shard_completions",
                      "Completions from supervisors, by outcome (accepted, rejected, error)",
                      ["shard", "outcome"])
supervisors_expired = Counter("coda_shard_supervisors_expired",
                              "Supervisors declared dead after their lease passed", ["shard"])
supervisor_sessions = Gauge("coda_shard_supervisor_sessions",
                            "Supervisor sessions open with this leader", ["shard"])

grpc_requests = Counter("coda_grpc_requests", "gRPC requests served by this node",
                        ["method", "code"])
grpc_seconds = Histogram("coda_grpc_request_seconds", "gRPC request latency by method and status",
                         ["method", "code"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25, 0.5, 1.0, 2.5, 10.0))


PER_SHARD = (raft_role, raft_term, commit_index, applied_index, log_entries, has_quorum,
             proposals_in_flight, leader_changes, snapshot_installs, snapshots_written,
             apply_batch_entries, apply_batch_seconds, read_barriers, dispatched,
             supervisors_expired, supervisor_sessions, history_warnings)


def init_shard(shard_label: str) -> None:
    """Create every per-shard series at zero, so dashboards see a shard before it acts
    (a follower never proposes, yet its proposals_in_flight is a real 0)."""
    for family in PER_SHARD:
        family.labels(shard_label)


class QueueDepthCollector:
    """Reads each local replica's queue counts from LMDB when Prometheus scrapes."""

    def __init__(self, replicas):
        self._replicas = replicas

    def collect(self):
        family = GaugeMetricFamily("coda_shard_queue_depth",
                                   "Entries in each durable queue of the shard (this replica)",
                                   labels=["shard", "queue"])
        for replica in self._replicas:
            for queue, depth in replica.queue_depths().items():
                family.add_metric([str(replica.shard), queue], depth)
        yield family
