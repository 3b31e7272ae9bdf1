"""A Flow node process: its shard replicas, the gRPC server and the metrics endpoint.

The main thread constructs the replicas (pysyncobj's tick threads stop if the thread that
built them dies, so they are built on the one that lives longest) and runs the asyncio
loop serving gRPC: the Flow API, the peer and supervisor-session services and the
standard gRPC health service (flow.health), all on the client port.

SIGTERM/SIGINT stop it cleanly, in this order (docs/operating.md, "Stopping a node"):
1. health goes NOT_SERVING (probes and load balancers stop sending new work here);
2. the dispatchers stop (supervisor sessions end, so they reconnect elsewhere);
3. the gRPC server refuses new calls and lets those in flight finish, for GRACE_S at most;
4. each shard this node leads hands its leadership to a caught-up peer (flow.handoff),
   now that nothing here is proposing, so no client gets an indeterminate outcome from
   the move and the shard is leaderless for one election round trip, not for an
   election timeout;
5. the Raft members stop, LMDB is committed and closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import grpc
from prometheus_client import REGISTRY, start_http_server

from coda.api import flow_pb2_grpc as pb_grpc
from coda.process import tune_process
from coda.flow import handoff, limits, metrics
from coda.flow.config import NodeConfig, split_host_port
from coda.flow.dispatcher import ShardDispatcher
from coda.flow.health import NodeHealth
from coda.flow.outbox import OutboxCourier
from coda.flow.replica import ShardReplica
from coda.flow.service import (FlowService, PeerService, Router, add_servicer,
                               channel_options)
from coda.flow.sessions import SessionService

log = logging.getLogger(__name__)

# In-flight calls get this long to finish once the server stops taking new ones; then
# they are cancelled (their clients retry on another node).
GRACE_S = 2.0


def server_options() -> list:
    # Supervisors' session streams can be quiet between heartbeats; their keepalive pings
    # (every 10 s) must not be answered with GOAWAY "too_many_pings".
    return channel_options() + [("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                                ("grpc.http2.max_ping_strikes", 0),
                                ("grpc.keepalive_permit_without_calls", 1)]


@dataclass
class _Running:
    """What serve() started, for _stop() to end in order."""
    replicas: list
    dispatchers: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    router: Router | None = None
    server: grpc.aio.Server | None = None
    health: NodeHealth | None = None
    metrics_server: object = None


def _start_replicas(cfg: NodeConfig, loop) -> list[ShardReplica]:
    replicas: list[ShardReplica] = []
    try:
        for shard in range(cfg.shards):
            replicas.append(ShardReplica(cfg, shard, loop))
        for replica in replicas:
            replica.waitBinded()
    except BaseException:
        for replica in replicas:  # their tick threads would keep the process alive
            replica.close()
        raise
    return replicas


async def _start_server(cfg: NodeConfig, node: _Running) -> None:
    node.router = Router(cfg, node.replicas)
    node.dispatchers = [ShardDispatcher(r, cfg.supervisor_lease_ms) for r in node.replicas]
    couriers = [OutboxCourier(r, d, node.router) for r, d in zip(node.replicas, node.dispatchers)]
    node.tasks = ([asyncio.create_task(d.run()) for d in node.dispatchers]
                  + [asyncio.create_task(c.run()) for c in couriers])
    server = grpc.aio.server(options=server_options(),
                             maximum_concurrent_rpcs=limits.grpc_concurrent_rpcs_max)
    add_servicer(server, pb_grpc.add_FlowServicer_to_server,
                 FlowService(cfg, node.router, node.dispatchers))
    add_servicer(server, pb_grpc.add_PeerServicer_to_server, PeerService(cfg, node.router))
    add_servicer(server, pb_grpc.add_SupervisorSessionsServicer_to_server,
                 SessionService(cfg, node.dispatchers))
    node.health = NodeHealth(node.replicas)
    node.health.add_to(server)
    if server.add_insecure_port(cfg.me.client) == 0:
        raise OSError(f"can't bind the client address {cfg.me.client}")
    node.server = server
    await node.health.start()
    await server.start()


async def serve(cfg: NodeConfig, ready_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    node = _Running(_start_replicas(cfg, loop))
    stop = asyncio.Event()
    try:
        REGISTRY.register(metrics.QueueDepthCollector(node.replicas))
        metrics_host, metrics_port = split_host_port(cfg.me.metrics, "metrics")
        node.metrics_server, _ = start_http_server(metrics_port, addr=metrics_host)
        await _start_server(cfg, node)
        log.info("node %s serving %s (raft %s, metrics %s, %d shards)", cfg.node_id,
                 cfg.me.client, cfg.me.raft, cfg.me.metrics, cfg.shards)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready_event is not None:
            ready_event.set()
        await stop.wait()
    finally:
        await _stop(cfg, node)


async def _stop(cfg: NodeConfig, node: _Running) -> None:
    started_s = time.monotonic()
    log.info("node %s stopping", cfg.node_id)
    if node.health is not None:
        await node.health.drain()
    for task in node.tasks:
        task.cancel()
    for dispatcher in node.dispatchers:
        dispatcher.stop()
    if node.server is not None:
        await node.server.stop(GRACE_S)
    served_s = time.monotonic() - started_s
    handed = await handoff.hand_off_all(node.replicas) if node.server is not None else {}
    if node.router is not None:
        await node.router.close()
    for replica in node.replicas:
        replica.close()
    if node.metrics_server is not None:
        node.metrics_server.shutdown()
    log.info("stop took %.3f s (calls drained in %.3f s; leadership of shards %s handed "
             "off)", time.monotonic() - started_s, served_s, sorted(handed) or "none")
    log.info("node %s stopped", cfg.node_id)  # the last line, as operators and tests expect


def run(cfg: NodeConfig) -> None:
    import uvloop
    tune_process()
    try:
        uvloop.run(serve(cfg))
    except (RuntimeError, OSError) as exc:
        # Start-up refusals (a journal that lost entries, an unreadable Raft meta file, a
        # port in use) end the process with their reason, not a traceback.
        log.critical("node %s can't start: %s", cfg.node_id, exc)
        raise SystemExit(1) from None
