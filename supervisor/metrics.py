"""Prometheus metrics of a supervisor, in a registry of its own.

Its own registry, not prometheus_client's global one: a process that embeds a supervisor
(a test, a Flow node in a dev setup) must not see its families collide or mix.
Per-shard families carry a `shard` label; shard counts are bounded (limits.shards_max).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SupervisorMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
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
        self.in_flight = Gauge("coda_supervisor_in_flight",
                               "Items dispatched to this supervisor and not finished", registry=r)
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
                       self.reconnects, self.connected, self.unacked):
            family.labels(str(shard))

    def watch_pool(self, pool) -> None:
        """Export the pool's worker restarts, if the pool counts them."""
        self.registry.register(_PoolCollector(pool))

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
    def __init__(self, pool):
        self._pool = pool

    def describe(self):
        return []  # optional series: described only when collected

    def collect(self):
        restarts = pool_restarts(self._pool)
        if restarts is not None:
            family = CounterMetricFamily("coda_supervisor_worker_restarts",
                                         "Worker processes restarted after dying")
            family.add_metric([], restarts)
            yield family
        pids = _safe(lambda: self._pool.worker_pids())
        if pids is not None:
            workers = GaugeMetricFamily("coda_supervisor_workers", "Live worker processes")
            workers.add_metric([], len(pids))
            yield workers


def _safe(fn):
    try:
        return fn()
    except Exception:  # a scrape must never fail because the pool is mid-restart
        return None
