"""The Coda client: `coda.Client` (asyncio) and `SyncClient` (for scripts and the CLI).

Talks gRPC to any Flow node (several addresses may be given, comma-separated; the client
moves to the next on connection trouble). Retries what is safe to retry until a deadline:
UNAVAILABLE, NOT_LEADER, RESOURCE_EXHAUSTED, and indeterminate outcomes of requests that
carry a request id (a retried start reuses its request id, so it never creates a second
workflow). What still fails is raised as the CodaError the server sent.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass

import grpc

from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda.errors import CodaError, Indeterminate, InvalidArgument
from coda.flow import limits, model
from coda.flow.sharding import shard_for
from coda.flow.wire import error_from_rpc
from coda.storage import codec

REUSE_ENUM = {model.ALLOW_DUPLICATE: pb.ALLOW_DUPLICATE,
              model.ALLOW_DUPLICATE_FAILED_ONLY: pb.ALLOW_DUPLICATE_FAILED_ONLY,
              model.REJECT_DUPLICATE: pb.REJECT_DUPLICATE,
              model.TERMINATE_IF_RUNNING: pb.TERMINATE_IF_RUNNING}

CALL_TIMEOUT_S = limits.proposal_timeout_s + 5.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
SHARD_MAP_TTL_S = 10.0
SHARD_MAP_TIMEOUT_S = 2.0


def parse_addresses(address) -> list[str]:
    if isinstance(address, str):
        parts = [a.strip() for a in address.split(",") if a.strip()]
    else:
        parts = [str(a).strip() for a in address]
    if not parts:
        raise InvalidArgument("no Flow address given (use host:port[,host:port...] or "
                              "set CODA_ADDRESS)", field="address")
    for part in parts:
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"Flow address {part!r} is not host:port", field="address")
    return parts


def workflow_to_dict(info: pb.WorkflowInfo) -> dict:
    return {
        "workflow_id": info.workflow_id, "run_id": info.run_id,
        "workflow_type": info.workflow_type, "status": info.status,
        "start_time_ms": info.start_time_ms, "close_time_ms": info.close_time_ms or None,
        "attempt": info.attempt, "history_length": info.history_length, "shard": info.shard,
        "result": codec.decode_payload(info.result, what="result") if info.result else None,
        "failure": info.failure or None, "queued_on": info.queued_on or None,
    }


def cluster_status_to_dict(answer: pb.GetClusterStatusResponse) -> dict:
    return {
        "shard_count": answer.shard_count, "answered_by": answer.answered_by,
        "shards": [{
            "shard": s.shard, "leader": s.leader or None,
            "queue_depths": dict(s.queue_depths),
            "replicas": [{
                "node_id": r.node_id, "address": r.address, "role": r.role, "term": r.term,
                "commit_index": r.commit_index, "applied_index": r.applied_index,
                "log_length": r.log_length, "leader": r.leader or None,
                "reachable": r.reachable} for r in s.replicas],
        } for s in answer.shards],
    }


@dataclass
class WorkflowHandle:
    client: "Client"
    workflow_id: str
    run_id: str
    started: bool = True

    async def describe(self) -> dict:
        return await self.client.describe_workflow(self.workflow_id, self.run_id)


class Client:
    def __init__(self, address, *, timeout_s: float = 30.0,
                 payload_bytes_max: int = limits.payload_bytes_default):
        self.addresses = parse_addresses(address)
        self.timeout_s = timeout_s
        self.payload_bytes_max = payload_bytes_max
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._preferred = random.randrange(len(self.addresses))
        # Shard map (shard -> leader's client address), fetched lazily: requests about one
        # workflow go straight to its shard's leader, saving the server a forward hop.
        # Only a hint: any node still accepts any request.
        self._shard_leaders: list[str | None] | None = None
        self._shard_map_due_s = 0.0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _stub(self, address: str) -> pb_grpc.FlowStub:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_send_message_length", limits.grpc_message_bytes_max),
                ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
                ("grpc.enable_retries", 0)])
        return pb_grpc.FlowStub(self._channels[address])

    async def _call(self, method: str, request, *, retry_indeterminate: bool,
                    workflow_id: str | None = None):
        deadline = time.monotonic() + self.timeout_s
        backoff = BACKOFF_INITIAL_S
        attempt = 0
        leader = await self._leader_for(workflow_id) if workflow_id is not None else None
        while True:
            if leader is not None:
                address, leader = leader, None  # first try only; then any node
            else:
                address = self.addresses[(self._preferred + attempt) % len(self.addresses)]
            remaining = deadline - time.monotonic()
            try:
                return await getattr(self._stub(address), method)(
                    request, timeout=max(0.1, min(CALL_TIMEOUT_S, remaining)))
            except grpc.aio.AioRpcError as exc:
                err = error_from_rpc(exc, target=address)
            self._shard_map_due_s = 0.0  # something moved: refresh the map next time
            retry = err.retryable and (err.definite or retry_indeterminate)
            if not retry or time.monotonic() + backoff > deadline:
                raise err
            if isinstance(err, Indeterminate) or not err.definite or err.code == "UNAVAILABLE":
                attempt += 1  # try another node
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _leader_for(self, workflow_id: str) -> str | None:
        if time.monotonic() >= self._shard_map_due_s:
            self._shard_map_due_s = time.monotonic() + SHARD_MAP_TTL_S
            address = self.addresses[self._preferred]
            try:
                answer = await self._stub(address).GetShardMap(
                    pb.GetShardMapRequest(), timeout=SHARD_MAP_TIMEOUT_S)
                self._shard_leaders = [l or None for l in answer.leaders] or None
            except grpc.aio.AioRpcError:
                self._shard_leaders = None
        if not self._shard_leaders:
            return None
        return self._shard_leaders[shard_for(workflow_id, len(self._shard_leaders))]

    async def start_workflow(self, workflow_type: str, args=None, *, workflow_id: str | None = None,
                             reuse_policy: str = model.ALLOW_DUPLICATE,
                             request_id: str | None = None) -> WorkflowHandle:
        if reuse_policy not in REUSE_ENUM:
            raise InvalidArgument(f"unknown reuse_policy {reuse_policy!r}; one of "
                                  f"{', '.join(model.REUSE_POLICIES)}", field="reuse_policy")
        payload = codec.encode_payload(args if args is not None else {}, what="workflow args",
                                       limit_bytes=self.payload_bytes_max)
        request = pb.StartWorkflowRequest(
            workflow_id=workflow_id or f"{workflow_type}-{uuid.uuid4().hex}",
            workflow_type=workflow_type, input=payload, reuse_policy=REUSE_ENUM[reuse_policy],
            request_id=request_id or uuid.uuid4().hex)
        answer = await self._call("StartWorkflow", request, retry_indeterminate=True,
                                  workflow_id=request.workflow_id)
        return WorkflowHandle(self, request.workflow_id, answer.run_id, answer.started)

    def get_workflow_handle(self, workflow_id: str, run_id: str = "") -> WorkflowHandle:
        return WorkflowHandle(self, workflow_id, run_id)

    async def describe_workflow(self, workflow_id: str, run_id: str | None = None) -> dict:
        answer = await self._call("DescribeWorkflow", pb.DescribeWorkflowRequest(
            workflow_id=workflow_id, run_id=run_id or ""), retry_indeterminate=True,
            workflow_id=workflow_id)
        return workflow_to_dict(answer.workflow)

    async def list_workflows(self, *, statuses=(), workflow_types=(), page_size: int = 0,
                             page_token: bytes = b"") -> tuple[list[dict], bytes]:
        answer = await self._call("ListWorkflows", pb.ListWorkflowsRequest(
            statuses=list(statuses), workflow_types=list(workflow_types), page_size=page_size,
            page_token=page_token), retry_indeterminate=True)
        return [workflow_to_dict(w) for w in answer.workflows], bytes(answer.next_page_token)

    async def iter_workflows(self, **filters):
        token = b""
        while True:
            items, token = await self.list_workflows(page_token=token, **filters)
            for item in items:
                yield item
            if not token:
                return

    async def cluster_status(self) -> dict:
        answer = await self._call("GetClusterStatus", pb.GetClusterStatusRequest(),
                                  retry_indeterminate=True)
        return cluster_status_to_dict(answer)

    async def shard_map(self) -> dict:
        answer = await self._call("GetShardMap", pb.GetShardMapRequest(), retry_indeterminate=True)
        return {"shard_count": answer.shard_count, "leaders": [l or None for l in answer.leaders]}


class SyncClient:
    """The same API, blocking: one private event loop per client."""

    def __init__(self, address, **kwargs):
        self._client = Client(address, **kwargs)  # first: a bad address leaks no event loop
        self._loop = asyncio.new_event_loop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def start_workflow(self, *args, **kwargs) -> WorkflowHandle:
        return self._run(self._client.start_workflow(*args, **kwargs))

    def describe_workflow(self, *args, **kwargs) -> dict:
        return self._run(self._client.describe_workflow(*args, **kwargs))

    def list_workflows(self, **kwargs):
        return self._run(self._client.list_workflows(**kwargs))

    def list_all(self, **filters) -> list[dict]:
        """Every matching workflow, following page tokens to the end."""
        async def collect():
            return [w async for w in self._client.iter_workflows(**filters)]
        return self._run(collect())

    def cluster_status(self) -> dict:
        return self._run(self._client.cluster_status())

    def shard_map(self) -> dict:
        return self._run(self._client.shard_map())


__all__ = ["Client", "SyncClient", "WorkflowHandle", "CodaError"]
