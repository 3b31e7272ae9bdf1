"""The standard gRPC health service (grpc.health.v1.Health: Check and Watch) of a Flow node.

Served on the node's client port beside the Flow API, so grpc_health_probe, Kubernetes'
gRPC probes and load balancers can ask it without knowing Coda. The servicer is
grpcio-health-checking's; this module only decides the statuses (docs/operating.md):

- `""` (the whole server): SERVING while the node runs and every one of its shard
  replicas' Raft tick threads is alive; NOT_SERVING from the moment the node starts to
  stop (SIGTERM), or if a tick thread died (restarting the process is the cure). Use it
  for liveness.
- `coda.api.v1.Flow`: SERVING when `""` is and at least one shard replica on this node
  is connected to a quorum of its peers; NOT_SERVING otherwise (draining, stopping, or
  cut off from the other nodes, when it can neither lead nor reach a leader). Use it for
  readiness and load balancing: a node cut off from its peers only answers UNAVAILABLE.

Statuses are recomputed every HEALTH_PERIOD_S from each replica's published Raft status
(flow.replica refreshes it every 0.25 s) and pushed to Watch streams only when they
change. `drain()` sets everything NOT_SERVING for good and ends the Watch streams, so a
graceful server stop is not held up by watchers until its grace period runs out.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1.health import aio as health_aio  # the asyncio servicer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coda.api import flow_pb2 as pb

log = logging.getLogger(__name__)

OVERALL = ""
FLOW_SERVICE = pb.DESCRIPTOR.services_by_name["Flow"].full_name  # "coda.api.v1.Flow"
SERVICES = (OVERALL, FLOW_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Readiness probes poll every few seconds; half a second keeps the answer fresher than
# that at the cost of reading a few dicts.
HEALTH_PERIOD_S = 0.5
# After drain() publishes NOT_SERVING: time for the Watch streams to send it before they
# are ended (the writes are local socket sends).
WATCH_FLUSH_S = 0.05


def verdict(replicas: list[dict], draining: bool) -> dict[str, int]:
    """{service: status} from [{"running": bool, "has_quorum": bool}] per replica."""
    alive = not draining and bool(replicas) and all(r["running"] for r in replicas)
    ready = alive and any(r["has_quorum"] for r in replicas)
    return {OVERALL: SERVING if alive else NOT_SERVING,
            FLOW_SERVICE: SERVING if ready else NOT_SERVING}


def status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


class _Servicer(health_aio.HealthServicer):
    """grpcio-health-checking's servicer, with Watch streams that end at drain()."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()

    async def Watch(self, request, context) -> None:
        watch = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({watch, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, closing):
                task.cancel()
            # The parent's Watch decrements its watcher counts in a finally: let it run.
            await asyncio.gather(watch, closing, return_exceptions=True)


class NodeHealth:
    """Owns the health statuses of one node; runs on the node's asyncio loop."""

    def __init__(self, replicas: list) -> None:
        self.replicas = replicas
        self.servicer = _Servicer()
        self.draining = False
        self._published: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def add_to(self, server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        """Publish the first statuses (before the server takes calls), then keep them fresh."""
        await self.refresh()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_PERIOD_S)
            try:
                await self.refresh()
            except Exception:  # a bad status read must not end health reporting
                log.exception("refreshing health statuses failed")

    async def refresh(self) -> None:
        states = [{"running": r.tick_thread_alive(),
                   "has_quorum": bool(r.status().get("has_quorum"))} for r in self.replicas]
        for service, status in verdict(states, self.draining).items():
            if self._published.get(service) != status:
                self._published[service] = status
                await self.servicer.set(service, status)
                log.info("health %r: %s", service or "(server)", status_name(status))

    def status(self, service: str = OVERALL) -> int | None:
        return self._published.get(service)

    async def drain(self) -> None:
        """NOT_SERVING for every service, for good; Watch streams get it, then end."""
        self.draining = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for service in SERVICES:
            self._published[service] = NOT_SERVING
        await self.servicer.enter_graceful_shutdown()
        log.info("health: NOT_SERVING (node stopping)")
        await asyncio.sleep(WATCH_FLUSH_S)
        self.servicer.closing.set()
