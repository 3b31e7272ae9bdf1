"""Prometheus metrics of a Flow node: per shard (label `shard`) and per node.

Replicas push their Raft figures into the gauges from their own tick thread (cheap, every
~0.25 s); queue depths and the age of each queue's oldest entry are read from LMDB at
scrape time by a collector, so they are exact (and bounded: one seek per queue).

Counters of what the leader does (dispatch, timers, completions) are counted by the shell
around the state machine (flow.dispatcher, flow.sessions), never inside it: apply stays a
pure function. Every label takes values from a small fixed set (shard numbers, timer
kinds, gRPC methods): no workflow ids, supervisor ids or queue entries as labels, except
`queue`, whose values are the declared workflow and task types.

The process itself (CPU, memory, open files, GC) is exported by prometheus_client's default
collectors on the same registry (process_*, python_gc_*, python_info).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from coda.flow import sm_common as c
from coda.metric_labels import LabelChildren

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
eager_dispatched = Counter(
    "coda_shard_eager_dispatched",
    "Of those, assigned by the start or completion that queued them (eager dispatch)", ["shard"])
chained_workflow_tasks = Counter(
    "coda_shard_chained_workflow_tasks",
    "Workflow tasks a supervisor ran on a task's result and sent with it, by outcome: "
    "accepted (committed with the result: one commit and dispatch less) or refused "
    "(the result alone; the workflow task went the usual way)", ["shard", "outcome"])
CHAINED_OUTCOMES = ("accepted", "refused")
appended_entries = Counter(
    "coda_shard_appended_entries",
    "Entries this replica appended as leader, by form: its write set (replicas make the "
    "writes) or its commands (every replica runs them; flow.speculation)", ["shard", "form"])
ENTRY_FORMS = ("writes", "commands")
dispatched_before_commit = Counter(
    "coda_shard_dispatched_before_commit",
    "Of those, new runs' first workflow tasks sent while their start was appended, not "
    "yet committed (speculative dispatch, flow.speculation)", ["shard"])
answered_batches = Counter(
    "coda_shard_answered_batches",
    "Batches of committed results handed to proposers, by when: before the LMDB commit "
    "of their entries (all of them this leader's own write sets; flow.replica) or after it",
    ["shard", "when"])
ANSWER_TIMES = ("before_lmdb_commit", "after_lmdb_commit")
completions = Counter("coda_shard_completions",
                      "Completions from supervisors, by outcome (accepted, rejected, error)",
                      ["shard", "outcome"])
supervisors_expired = Counter("coda_shard_supervisors_expired",
                              "Supervisors declared dead after their lease passed", ["shard"])
supervisor_sessions = Gauge("coda_shard_supervisor_sessions",
                            "Supervisor sessions open with this leader", ["shard"])

# --- execution, counted by the leader's dispatcher and session servicer ------------------

BATCH_ITEMS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

proposal_batch_commands = Histogram(
    "coda_shard_proposal_batch_commands",
    "Commands carried by one Raft entry (the proposals of one event-loop turn)", ["shard"],
    buckets=BATCH_ITEMS_BUCKETS)
dispatch_batch_items = Histogram(
    "coda_shard_dispatch_batch_items",
    "Items committed in one assign and sent in one dispatches message", ["shard"],
    buckets=BATCH_ITEMS_BUCKETS)
completion_batch_items = Histogram(
    "coda_shard_completion_batch_items",
    "Completions carried by one supervisor message (proposed together)", ["shard"],
    buckets=BATCH_ITEMS_BUCKETS)
reported_failures = Counter(
    "coda_shard_reported_failures",
    "Failed attempts reported by supervisors and committed, by item (task, workflow_task)",
    ["shard", "item"])
task_heartbeats = Counter("coda_shard_task_heartbeats",
                          "Task heartbeats from supervisors proposed to the log", ["shard"])
timers_fired = Counter(
    "coda_shard_timers_fired",
    "Durable timers the leader fired, by kind (retries, timeouts, user sleeps, schedules)",
    ["shard", "kind"])
retries = Counter(
    "coda_shard_retries",
    "Retries started: a retry timer fired, so the backoff ended and the attempt was queued "
    "again; by what is retried (task, workflow_task, workflow)", ["shard", "of"])
timeouts = Counter(
    "coda_shard_timeouts",
    "Timeouts that fired: start_to_close, heartbeat, schedule_to_start (of task attempts), "
    "execution (of workflow runs)", ["shard", "timeout"])
timer_lag_seconds = Histogram(
    "coda_shard_timer_lag_seconds",
    "From a timer's due time to the leader proposing to fire it (the leader's clock)",
    ["shard"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0))
result_waiters = Gauge("coda_shard_result_waiters",
                       "WaitWorkflow long polls waiting on this leader for a run to close",
                       ["shard"])
proposal_seconds = Histogram(
    "coda_shard_proposal_seconds",
    "From proposing a command to its committed result (or error), on this leader",
    ["shard"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
proposal_errors = Counter(
    "coda_shard_proposal_errors",
    "Proposals that ended in an error, by error code (NOT_LEADER, INDETERMINATE, ...; "
    "a command's own refusal, such as a duplicate start, included)", ["shard", "code"])

grpc_requests = Counter("coda_grpc_requests", "gRPC requests served by this node",
                        ["method", "code"])
grpc_seconds = Histogram("coda_grpc_request_seconds", "gRPC request latency by method and status",
                         ["method", "code"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25, 0.5, 1.0, 2.5, 10.0))


PER_SHARD = (raft_role, raft_term, commit_index, applied_index, log_entries, has_quorum,
             proposals_in_flight, leader_changes, snapshot_installs, snapshots_written,
             apply_batch_entries, apply_batch_seconds, read_barriers, dispatched,
             eager_dispatched, dispatched_before_commit, supervisors_expired,
             supervisor_sessions, history_warnings, dispatch_batch_items,
             completion_batch_items, proposal_batch_commands,
             task_heartbeats, timer_lag_seconds, result_waiters, proposal_seconds)

# Timer kinds (flow.sm_common) -> the `of` of coda_shard_retries / the `timeout` of
# coda_shard_timeouts. A kind in neither is only in coda_shard_timers_fired.
RETRY_TIMERS = {c.TIMER_TASK_RETRY: "task", c.TIMER_WFT_RETRY: "workflow_task",
                c.TIMER_WORKFLOW_RETRY: "workflow"}
TIMEOUT_TIMERS = {c.TIMER_START_TO_CLOSE: "start_to_close", c.TIMER_HEARTBEAT: "heartbeat",
                  c.TIMER_SCHEDULE_TO_START: "schedule_to_start",
                  c.TIMER_EXECUTION_TIMEOUT: "execution"}
TIMER_KINDS = tuple(RETRY_TIMERS) + tuple(TIMEOUT_TIMERS) + (c.TIMER_USER, c.TIMER_SCHEDULE)
COMPLETION_OUTCOMES = ("accepted", "rejected", "error")
ITEMS = ("task", "workflow_task")


# family.labels(*values), remembered (coda.metric_labels): the families above live as
# long as the process.
child = LabelChildren()


def init_shard(shard_label: str) -> None:
    """Create every per-shard series at zero, so dashboards see a shard before it acts
    (a follower never proposes, yet its proposals_in_flight is a real 0). Labelled
    families get each value of their fixed label set, so a rate over them is 0, not
    absent, until the first retry or timeout."""
    for family in PER_SHARD:
        family.labels(shard_label)
    for kind in TIMER_KINDS:
        timers_fired.labels(shard_label, kind)
    for of in RETRY_TIMERS.values():
        retries.labels(shard_label, of)
    for timeout in TIMEOUT_TIMERS.values():
        timeouts.labels(shard_label, timeout)
    for outcome in COMPLETION_OUTCOMES:
        completions.labels(shard_label, outcome)
    for item in ITEMS:
        reported_failures.labels(shard_label, item)
    rejected_proposals.labels(shard_label, "in_flight")
    for form in ENTRY_FORMS:
        appended_entries.labels(shard_label, form)
    for outcome in CHAINED_OUTCOMES:
        chained_workflow_tasks.labels(shard_label, outcome)
    for when in ANSWER_TIMES:
        answered_batches.labels(shard_label, when)


def count_timers_fired(shard_label: str, kind: str, fired: int) -> None:
    """`fired` timers of one kind fired in one committed fire_timers command."""
    if fired <= 0:
        return
    if kind not in TIMER_KINDS:
        kind = "other"  # a kind this build does not know (a newer node's): bounded all the same
    timers_fired.labels(shard_label, kind).inc(fired)
    if kind in RETRY_TIMERS:
        retries.labels(shard_label, RETRY_TIMERS[kind]).inc(fired)
    elif kind in TIMEOUT_TIMERS:
        timeouts.labels(shard_label, TIMEOUT_TIMERS[kind]).inc(fired)


# Queues read per replica per scrape: each is one LMDB seek. Queues are one per declared
# type (and build, for pinned runs), far fewer than this; past it, the rest go unreported.
QUEUES_PER_SCRAPE_MAX = 2000


class QueueDepthCollector:
    """Reads each local replica's queues from LMDB when Prometheus scrapes: the depth of
    each and the age of its oldest entry (its enqueue time was stamped by the leader that
    committed it, so a skewed clock on this node skews the age by as much)."""

    def __init__(self, replicas):
        self._replicas = replicas

    def describe(self):
        return list(self._families())

    def collect(self):
        depth, age = self._families()
        now_ms = time.time() * 1000
        for replica in self._replicas:
            shard = str(replica.shard)
            for queue, (count, oldest_ms) in replica.queue_stats(QUEUES_PER_SCRAPE_MAX).items():
                depth.add_metric([shard, queue], count)
                if oldest_ms is not None:
                    age.add_metric([shard, queue], max(0.0, (now_ms - oldest_ms) / 1000))
        yield depth
        yield age

    @staticmethod
    def _families():
        depth = GaugeMetricFamily("coda_shard_queue_depth",
                                  "Entries in each durable queue of the shard (this replica)",
                                  labels=["shard", "queue"])
        age = GaugeMetricFamily("coda_shard_queue_oldest_age_seconds",
                                "Age of the oldest entry of each non-empty durable queue "
                                "(this replica's clock against the enqueueing leader's)",
                                labels=["shard", "queue"])
        return depth, age
