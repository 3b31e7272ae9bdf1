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
from coda.flow.replica import ShardReplica
from coda.flow.service import (FlowService, PeerService, Router, add_servicer,
                               channel_options)

log = logging.getLogger(__name__)

GRACE_S = 2.0


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
    server = grpc.aio.server(options=channel_options(),
                             maximum_concurrent_rpcs=limits.grpc_concurrent_rpcs_max)
    add_servicer(server, pb_grpc.add_FlowServicer_to_server, FlowService(cfg, router))
    add_servicer(server, pb_grpc.add_PeerServicer_to_server, PeerService(cfg, router))
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
