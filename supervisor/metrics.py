"""Prometheus metrics of a supervisor, in a registry of its own.

Its own registry, not prometheus_client's global one: a process that embeds a supervisor
(a test, a Flow node in a dev setup) must not see its families collide or mix.
Per-shard families carry a `shard` label; shard counts are bounded (limits.shards_max).
Per-worker families carry a `worker` label: the worker's slot index, bounded by
--workers (a restarted worker keeps its index, so a restart resets its counters, which
Prometheus's rate() handles). No workflow, run or item ids as labels.

Three kinds of series:
- counted as things happen (dispatches, completions, batches, item outcomes);
- read at scrape time from the supervisor and its pool (_SupervisorCollector,
  _PoolCollector): slots, credit, caches, workers, what each worker runs;
- this process (process_*, from prometheus_client's ProcessCollector) and each worker
  process (coda_supervisor_worker_cpu_seconds_total, ..._resident_memory_bytes, read
  from /proc; absent where there is no /proc).
"""

from __future__ import annotations

import os

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info,
                               ProcessCollector, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from coda.metric_labels import LabelChildren

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BATCH_ITEMS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
ITEMS = ("task", "workflow_task")
# How an item ended here (the `outcome` of coda_supervisor_items_finished_total).
OUTCOMES = ("completed", "failed", "timed_out", "worker_died", "shutdown")


class SupervisorMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        # family.labels(*values), remembered (coda.metric_labels), for this registry's
        # families: memoized per instance, as they die with it.
        self.child = LabelChildren()
        self._define_session_families()
        self._define_item_families()
        self._define_read_families()
        ProcessCollector(registry=self.registry)

    def _define_session_families(self) -> None:
        r = self.registry
        self.dispatches = Counter("coda_supervisor_dispatches_received",
                                  "Items Flow dispatched to this supervisor", ["shard"], registry=r)
        self.completions_sent = Counter("coda_supervisor_completions_sent",
                                        "Completions written to a session (resends included)",
                                        ["shard"], registry=r)
        self.completions_resent = Counter("coda_supervisor_completions_resent",
                                          "Completions sent again: after a reconnect or an "
                                          "overdue answer", ["shard"], registry=r)
        self.completions_acked = Counter("coda_supervisor_completions_acked",
                                         "Completions Flow committed", ["shard"], registry=r)
        self.completions_rejected = Counter("coda_supervisor_completions_rejected",
                                            "Completions Flow rejected (stale attempt, closed "
                                            "workflow)", ["shard"], registry=r)
        self.credit_granted = Counter("coda_supervisor_credit_granted",
                                      "Slots granted to Flow (hellos and credit messages)",
                                      ["shard"], registry=r)
        self.reconnects = Counter("coda_supervisor_session_reconnects",
                                  "Session attempts that ended (errors, not-leader answers)",
                                  ["shard"], registry=r)
        self.connected = Gauge("coda_supervisor_session_connected",
                               "1 while the shard's session is accepted", ["shard"], registry=r)
        self.unacked = Gauge("coda_supervisor_completions_unacked",
                             "Completions waiting for Flow's answer (the resend buffer)",
                             ["shard"], registry=r)
        self.heartbeats_sent = Counter("coda_supervisor_heartbeats_sent",
                                       "Lease heartbeats sent on the shard's session",
                                       ["shard"], registry=r)
        self.dispatch_batch_items = Histogram(
            "coda_supervisor_dispatch_batch_items", "Items in one dispatches message from Flow",
            ["shard"], buckets=BATCH_ITEMS_BUCKETS, registry=r)
        self.completion_batch_items = Histogram(
            "coda_supervisor_completion_batch_items",
            "Completions in one batch sent to Flow (one message)", ["shard"],
            buckets=BATCH_ITEMS_BUCKETS, registry=r)
        self.completion_ack_seconds = Histogram(
            "coda_supervisor_completion_ack_seconds",
            "From sending a completion to Flow's ack of it (its last send, if resent)",
            ["shard"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                2.5, 10.0), registry=r)

    def _define_item_families(self) -> None:
        r = self.registry
        self.in_flight = Gauge("coda_supervisor_in_flight",
                               "Items dispatched to this supervisor and not finished", registry=r)
        self.items_finished = Counter(
            "coda_supervisor_items_finished",
            "Items that ended here, by item (task, workflow_task) and outcome (completed, "
            "failed, timed_out: past its start_to_close_timeout, worker_died, shutdown)",
            ["item", "outcome"], registry=r)
        for item in ITEMS:
            for outcome in OUTCOMES:
                self.items_finished.labels(item, outcome)
        self.item_seconds = Histogram(
            "coda_supervisor_item_seconds",
            "From an item's dispatch arriving here to its completion being queued for Flow",
            ["item"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                               10.0, 30.0, 60.0, 300.0), registry=r)
        for item in ITEMS:
            self.item_seconds.labels(item)
        self.chained = Counter(
            "coda_supervisor_chained_workflow_tasks",
            "Workflow tasks run here on a task's result (coda.supervisor.chaining), by what "
            "became of them: sent with the result, dropped (the run failed or did not fit; "
            "the result went alone), timed_out (the result went alone after CHAIN_WAIT_S)",
            ["outcome"], registry=r)
        for outcome in ("sent", "dropped", "timed_out"):
            self.chained.labels(outcome)
        self.history_fetches = Counter(
            "coda_supervisor_history_fetches",
            "Whole histories read from Flow for a workflow task the cache could not complete, "
            "by outcome (ok, error)", ["outcome"], registry=r)
        for outcome in ("ok", "error"):
            self.history_fetches.labels(outcome)
        self.info = Info("coda_supervisor", "This supervisor: its id, build id and module",
                         registry=r)

    def _define_read_families(self) -> None:
        r = self.registry
        self.broadcast_reads = Counter(
            "coda_supervisor_broadcast_reads",
            "Broadcast variable reads by where they were served: worker_cache (hits in a "
            "worker), supervisor_cache (hits here), flow (misses read from Flow)",
            ["served_by"], registry=r)
        for served_by in ("worker_cache", "supervisor_cache", "flow"):
            self.broadcast_reads.labels(served_by)
        self.broadcast_update_lag = Histogram(
            "coda_supervisor_broadcast_update_lag_seconds",
            "From a broadcast version's commit (leader's clock) to this supervisor's cache",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.broadcast_watch_reopens = Counter(
            "coda_supervisor_broadcast_watch_reopens",
            "WatchBroadcasts streams reopened after an error", registry=r)
        self.state_reads = Counter("coda_supervisor_state_reads",
                                   "Reads of other workflows' state done for workflows",
                                   registry=r)

    def init_shard(self, shard: int) -> None:
        """Every per-shard series at zero, so a scrape sees a shard before it acts."""
        for family in (self.dispatches, self.completions_sent, self.completions_resent,
                       self.completions_acked, self.completions_rejected, self.credit_granted,
                       self.reconnects, self.connected, self.unacked, self.heartbeats_sent,
                       self.dispatch_batch_items, self.completion_batch_items,
                       self.completion_ack_seconds):
            family.labels(str(shard))

    def item_finished(self, is_workflow_task: bool, outcome: str, seconds: float) -> None:
        item = "workflow_task" if is_workflow_task else "task"
        self.child(self.items_finished, item, outcome if outcome in OUTCOMES else "failed").inc()
        self.child(self.item_seconds, item).observe(max(0.0, seconds))

    def watch_pool(self, pool) -> None:
        """Export the pool's workers: live, restarts, what each runs, their CPU and memory."""
        self.registry.register(_PoolCollector(pool))

    def watch_supervisor(self, supervisor) -> None:
        """Export what the supervisor holds: slots, per-shard credit, its history cache."""
        self.registry.register(_SupervisorCollector(supervisor))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def pool_restarts(pool) -> int | None:
    """The pool's count of worker restarts, under either name the pool might give it."""
    for name in ("worker_restarts", "restarts"):
        value = getattr(pool, name, None)
        if callable(value):
            value = value()
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class _PoolCollector:
    """Pools without statistics() (test doubles) export what they have: restarts, pids."""

    def __init__(self, pool):
        self._pool = pool

    def describe(self):
        return list(self._families().values())

    @staticmethod
    def _families() -> dict:
        def gauge(name, doc, labels=()):
            return GaugeMetricFamily(name, doc, labels=list(labels))

        def counter(name, doc, labels=()):
            return CounterMetricFamily(name, doc, labels=list(labels))

        return {
            "restarts": counter("coda_supervisor_worker_restarts",
                                "Worker processes restarted after dying"),
            "deaths": counter("coda_supervisor_worker_deaths",
                              "Worker processes that exited while the supervisor ran"),
            "workers": gauge("coda_supervisor_workers", "Live worker processes"),
            "pending": gauge("coda_supervisor_pool_pending",
                             "Items waiting for a live worker (all of theirs are down)"),
            "up": gauge("coda_supervisor_worker_up", "1 while the worker process is live",
                        ["worker"]),
            "in_flight": gauge("coda_supervisor_worker_in_flight",
                               "Items the worker process runs now", ["worker"]),
            "cpu": counter("coda_supervisor_worker_cpu_seconds",
                           "CPU time (user and system) of the worker process", ["worker"]),
            "rss": gauge("coda_supervisor_worker_resident_memory_bytes",
                         "Resident memory of the worker process", ["worker"]),
        }

    def collect(self):
        families = self._families()
        restarts = pool_restarts(self._pool)
        if restarts is not None:
            families["restarts"].add_metric([], restarts)
        pids = _safe(lambda: self._pool.worker_pids())
        if pids is not None:
            families["workers"].add_metric([], len(pids))
        stats = _safe(lambda: self._pool.statistics()) if hasattr(self._pool, "statistics") else None
        if stats is not None:
            _add_pool_statistics(families, stats)
        for family in families.values():
            if family.samples:
                yield family


def _add_pool_statistics(families: dict, stats: dict) -> None:
    families["deaths"].add_metric([], stats["deaths"])
    families["pending"].add_metric([], stats["pending"])
    for index, worker in sorted(stats["workers"].items()):
        label = [str(index)]
        pid = worker["pid"]
        families["up"].add_metric(label, 0 if pid is None else 1)
        families["in_flight"].add_metric(label, worker["in_flight"])
        usage = process_usage(pid) if pid is not None else None
        if usage is not None:
            families["cpu"].add_metric(label, usage[0])
            families["rss"].add_metric(label, usage[1])


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process from /proc/PID/stat; None without it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _CLOCK_TICKS_PER_S, rss_pages * _PAGE_BYTES


class _SupervisorCollector:
    def __init__(self, supervisor):
        self._supervisor = supervisor

    def describe(self):
        return list(self._families().values())

    @staticmethod
    def _families() -> dict:
        return {
            "slots": GaugeMetricFamily("coda_supervisor_slots",
                                       "Items this supervisor may run at once (--slots)"),
            "workers": GaugeMetricFamily("coda_supervisor_workers_configured",
                                         "Worker processes this supervisor keeps (--workers)"),
            "running": GaugeMetricFamily("coda_supervisor_shard_running",
                                         "Items of the shard running here (slots in use)",
                                         labels=["shard"]),
            "credit": GaugeMetricFamily("coda_supervisor_credit_outstanding",
                                        "Credit Flow holds for the shard: slots granted and "
                                        "not yet used by a dispatch", labels=["shard"]),
            "cache_runs": GaugeMetricFamily("coda_supervisor_history_cache_runs",
                                            "Runs whose history the supervisor caches"),
            "cache_reads": CounterMetricFamily(
                "coda_supervisor_history_cache_reads",
                "Workflow tasks that needed cached history, by result: hit (the cache "
                "completed the dispatched tail), miss (fetched from Flow)",
                labels=["result"]),
        }

    def collect(self):
        s = self._supervisor
        families = self._families()
        families["slots"].add_metric([], s.slots)
        families["workers"].add_metric([], s.workers)
        ledger = s.ledger
        if ledger is not None:
            for shard in range(ledger.shard_count):
                families["running"].add_metric([str(shard)], ledger.running[shard])
                families["credit"].add_metric([str(shard)], ledger.outstanding[shard])
        families["cache_runs"].add_metric([], len(s.histories))
        families["cache_reads"].add_metric(["hit"], s.histories.hits)
        families["cache_reads"].add_metric(["miss"], s.histories.misses)
        yield from families.values()


def _safe(fn):
    try:
        return fn()
    except Exception:  # a scrape must never fail because the pool is mid-restart
        return None
