"""A Flow node process: its shard replicas, the gRPC server and the metrics endpoint.

The main thread constructs the replicas (pysyncobj's tick threads stop if the thread that
built them dies, so they are built on the one that lives longest) and runs the asyncio
loop serving gRPC. SIGTERM/SIGINT stop it cleanly: stop accepting requests, let those in
flight finish for a moment, stop the Raft members, commit and close LMDB.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from prometheus_client import REGISTRY, start_http_server

from coda.api import flow_pb2_grpc as pb_grpc
from coda.flow import limits, metrics
from coda.flow.config import NodeConfig, split_host_port
from coda.flow.dispatcher import ShardDispatcher
from coda.flow.outbox import OutboxCourier
from coda.flow.replica import ShardReplica
from coda.flow.sessions import SessionService
from coda.flow.service import (FlowService, PeerService, Router, add_servicer,
                               channel_options)

log = logging.getLogger(__name__)

GRACE_S = 2.0


def server_options() -> list:
    # Supervisors' session streams can be quiet between heartbeats; their keepalive pings
    # (every 10 s) must not be answered with GOAWAY "too_many_pings".
    return channel_options() + [("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                                ("grpc.http2.max_ping_strikes", 0),
                                ("grpc.keepalive_permit_without_calls", 1)]


async def serve(cfg: NodeConfig, ready_event: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
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
    REGISTRY.register(metrics.QueueDepthCollector(replicas))
    metrics_host, metrics_port = split_host_port(cfg.me.metrics, "metrics")
    metrics_server, metrics_thread = start_http_server(metrics_port, addr=metrics_host)

    router = Router(cfg, replicas)
    dispatchers = [ShardDispatcher(replica, cfg.supervisor_lease_ms) for replica in replicas]
    couriers = [OutboxCourier(r, d, router) for r, d in zip(replicas, dispatchers)]
    dispatcher_tasks = ([asyncio.create_task(d.run()) for d in dispatchers]
                        + [asyncio.create_task(c.run()) for c in couriers])
    server = grpc.aio.server(options=server_options(),
                             maximum_concurrent_rpcs=limits.grpc_concurrent_rpcs_max)
    add_servicer(server, pb_grpc.add_FlowServicer_to_server,
                 FlowService(cfg, router, dispatchers))
    add_servicer(server, pb_grpc.add_PeerServicer_to_server, PeerService(cfg, router))
    add_servicer(server, pb_grpc.add_SupervisorSessionsServicer_to_server,
                 SessionService(cfg, dispatchers))
    if server.add_insecure_port(cfg.me.client) == 0:
        raise OSError(f"can't bind the client address {cfg.me.client}")
    await server.start()
    log.info("node %s serving %s (raft %s, metrics %s, %d shards)", cfg.node_id,
             cfg.me.client, cfg.me.raft, cfg.me.metrics, cfg.shards)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_event is not None:
        ready_event.set()
    try:
        await stop.wait()
    finally:
        log.info("node %s stopping", cfg.node_id)
        for task in dispatcher_tasks:
            task.cancel()
        for dispatcher in dispatchers:
            dispatcher.stop()
        await server.stop(GRACE_S)
        await router.close()
        for replica in replicas:
            replica.close()
        metrics_server.shutdown()
        log.info("node %s stopped", cfg.node_id)


def run(cfg: NodeConfig) -> None:
    import uvloop
    try:
        uvloop.run(serve(cfg))
    except (RuntimeError, OSError) as exc:
        # Start-up refusals (a journal that lost entries, an unreadable Raft meta file, a
        # port in use) end the process with their reason, not a traceback.
        log.critical("node %s can't start: %s", cfg.node_id, exc)
        raise SystemExit(1) from None
