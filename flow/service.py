"""gRPC servicers of a Flow node: the client API (Flow) and node-to-node calls (Peer).

Any node accepts any request. A request for a shard this node leads is proposed or read
here; otherwise it is forwarded once to the leader's node (marked so it is not forwarded
again: a forwarded request that misses the leader answers NOT_LEADER with a hint).
Errors leave as a gRPC status plus `coda-error-bin` trailers (flow.wire).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import grpc

from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda.errors import (CodaError, Internal, InvalidArgument, NotLeader, ResourceExhausted,
                         Unavailable)
from coda.flow import (commands, latency_trace, limits, metrics, model, outbox, queries,
                       validate, wire)
from coda.flow.schedule_service import ScheduleRpcs, list_page as schedules_page
from coda.flow.schedule_service import schedule_info
from coda.flow.state_service import StateRpcs
from coda.flow.visibility_service import (VisibilityRpcs, list_request, list_shard,
                                          supervisors_answer, workflow_info)
from coda.flow.config import NodeConfig
from coda.flow.replica import ShardReplica
from coda.flow.sharding import shard_for
from coda.storage import codec, keys

log = logging.getLogger(__name__)

# How long a request waits for a shard to elect a leader before answering UNAVAILABLE.
LEADER_WAIT_S = 5.0
LEADER_POLL_S = 0.05
FORWARD_TIMEOUT_S = limits.proposal_timeout_s + 2.0
PEER_STATUS_TIMEOUT_S = 1.0

REUSE_BY_ENUM = {pb.ALLOW_DUPLICATE: model.ALLOW_DUPLICATE,
                 pb.ALLOW_DUPLICATE_FAILED_ONLY: model.ALLOW_DUPLICATE_FAILED_ONLY,
                 pb.REJECT_DUPLICATE: model.REJECT_DUPLICATE,
                 pb.TERMINATE_IF_RUNNING: model.TERMINATE_IF_RUNNING}


class Undecodable:
    """Request bytes that are not the method's protobuf message (see add_servicer)."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(decode):
    def tolerant(data: bytes):
        try:
            return decode(data)
        except Exception as exc:  # protobuf's DecodeError, and whatever else it raises
            return Undecodable(exc)
    return tolerant


class _TolerantRegistration:
    """Stands in for the server while generated code registers a servicer, and registers
    its handlers with request decoders that hand undecodable bytes to `rpc` as
    `Undecodable` (answered INVALID_ARGUMENT). Left to grpc, such bytes were answered
    UNKNOWN (an Internal error to clients) with a traceback logged for every request.
    Unlike a server interceptor, this costs nothing per call."""

    def __init__(self, server):
        self._server = server
        self.registered = False

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        handlers = {name: h._replace(request_deserializer=_tolerant(h.request_deserializer))
                    for name, h in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),))
        self._server.add_registered_method_handlers(service, handlers)
        self.registered = True


def add_servicer(server, add_to_server, servicer) -> None:
    """`add_XServicer_to_server(servicer, server)` of generated code, decoding tolerantly."""
    registration = _TolerantRegistration(server)
    add_to_server(servicer, registration)
    assert registration.registered, "generated code no longer registers method handlers"


def rpc(method):
    """Count, time and translate errors for one servicer method."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        started = time.perf_counter()
        entered_s = latency_trace.now_s() if latency_trace.enabled else 0.0
        code = "OK"
        try:
            if isinstance(request, Undecodable):
                raise InvalidArgument(f"{name}: the request is not a valid protobuf message: "
                                      f"{request.error}", field="request")
            return await method(self, request, context)
        except CodaError as exc:
            code = wire.status_for(exc).name
            context.set_trailing_metadata(wire.error_trailers(exc))
            await context.abort(wire.status_for(exc), exc.message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = "INTERNAL"
            log.exception("%s failed", name)
            err = Internal(f"{name} failed: {exc!r}")
            context.set_trailing_metadata(wire.error_trailers(err))
            await context.abort(grpc.StatusCode.INTERNAL, err.message)
        finally:
            metrics.child(metrics.grpc_requests, name, code).inc()
            metrics.child(metrics.grpc_seconds, name, code).observe(time.perf_counter() - started)
            if latency_trace.enabled and name == "StartWorkflow":
                latency_trace.stamp("rpc", request.workflow_id, entered_s, latency_trace.now_s())

    return wrapper


def is_forwarded(context) -> bool:
    return any(k == wire.FORWARDED_METADATA_KEY for k, _ in (context.invocation_metadata() or ()))


class Router:
    """Finds a shard's leader: this node's replica, or a peer's client address."""

    def __init__(self, cfg: NodeConfig, replicas: list[ShardReplica]):
        self.cfg = cfg
        self.replicas = replicas
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple, object] = {}  # (stub class, address) -> stub

    def shard_of(self, workflow_id: str) -> int:
        return shard_for(workflow_id, self.cfg.shards)

    def flow_stub(self, address: str) -> pb_grpc.FlowStub:
        return self._stub(pb_grpc.FlowStub, address)

    def peer_stub(self, address: str) -> pb_grpc.PeerStub:
        return self._stub(pb_grpc.PeerStub, address)

    def _stub(self, kind, address: str):
        # Kept: making a stub builds a callable per RPC method (~13 us a forward).
        stub = self._stubs.get((kind, address))
        if stub is None:
            stub = self._stubs[(kind, address)] = kind(self._channel(address))
        return stub

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=channel_options())
        return self._channels[address]

    async def on_leader(self, shard: int, context, local, remote):
        """Run `local(replica)` if this node leads `shard`, else `remote(leader_address)`."""
        replica = self.replicas[shard]
        deadline = time.monotonic() + LEADER_WAIT_S
        while True:
            if replica.is_leader():
                return await local(replica)
            hint = replica.leader_hint()
            if is_forwarded(context):
                raise NotLeader(f"this node does not lead shard {shard}", shard=shard,
                                leader_hint=hint)
            if hint is not None and hint != self.cfg.me.client:
                try:
                    return await remote(hint)
                except grpc.aio.AioRpcError as exc:
                    err = wire.error_from_rpc(exc, target=hint)
                    if not (isinstance(err, NotLeader) or wire.never_sent(exc)):
                        raise err from None
            if time.monotonic() > deadline:
                raise Unavailable(f"shard {shard} has no reachable leader", shard=shard)
            await asyncio.sleep(LEADER_POLL_S)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


def channel_options() -> list:
    return [("grpc.max_send_message_length", limits.grpc_message_bytes_max),
            ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.enable_retries", 0)]


def forward_metadata() -> tuple:
    return ((wire.FORWARDED_METADATA_KEY, "1"),)


async def _closed_within(replica, waiter, workflow_id: str, run_id: str, wait_s: float):
    """The run's record once it is closed, waiting up to wait_s; None if it still runs.
    Local reads: this leader has just committed the start (or answered it from its
    request table), so its committed view holds the run; a closed run never changes."""
    def closed_record():
        with replica.committed.read() as txn:
            record = queries.describe(txn, workflow_id, run_id)
        return record if record["status"] != model.RUNNING else None

    try:
        record = closed_record()
        if record is None:
            await asyncio.wait_for(asyncio.shield(waiter), wait_s)
            record = closed_record()
    except (TimeoutError, CodaError):
        return None  # the caller waits on with WaitWorkflow, which reports what is wrong
    return record


class FlowService(ScheduleRpcs, StateRpcs, VisibilityRpcs, pb_grpc.FlowServicer):
    def __init__(self, cfg: NodeConfig, router: Router, dispatchers: list):
        self.cfg = cfg
        self.router = router
        self.dispatchers = dispatchers

    @rpc
    async def StartWorkflow(self, request, context):
        # The type first: the SDK derives a workflow id from the type when none is given,
        # so a bad type must be reported as the type, not as an id the caller never chose.
        workflow_type = validate.type_name(request.workflow_type)
        workflow_id = validate.workflow_id(request.workflow_id)
        request_id = validate.request_id(request.request_id or uuid.uuid4().hex)
        policy = REUSE_BY_ENUM.get(request.reuse_policy)
        if policy is None:
            raise InvalidArgument(f"unknown reuse_policy {request.reuse_policy}", field="reuse_policy")
        payload = bytes(request.input) or codec.pack(None)
        if len(payload) > self.cfg.payload_bytes_max:
            raise InvalidArgument(f"workflow input is {len(payload)} bytes, over the limit of "
                                  f"{self.cfg.payload_bytes_max} bytes", field="input",
                                  size_bytes=len(payload), limit_bytes=self.cfg.payload_bytes_max)
        codec.decode_payload(payload, what="workflow input")
        shard = self.router.shard_of(workflow_id)
        wait_s = min(request.wait_ms, limits.wait_workflow_ms_max) / 1000

        async def local(replica):
            dispatcher = self.dispatchers[shard]
            # Registered before the start is proposed: a run that closes before this
            # handler resumes still wakes it. With every wait slot taken the start goes
            # on, answered without `closed` (the caller waits on with WaitWorkflow).
            waiter = None
            if wait_s > 0:
                try:
                    waiter = dispatcher.closed_waiter(workflow_id)
                except ResourceExhausted:
                    pass
            try:
                proposed_s = latency_trace.now_s() if latency_trace.enabled else 0.0
                answer = await start(replica, dispatcher)
                started_s = latency_trace.now_s() if latency_trace.enabled else 0.0
                if waiter is not None:
                    closed = await _closed_within(replica, waiter, workflow_id,
                                                  answer.run_id, wait_s)
                    if closed is not None:
                        answer.closed.CopyFrom(workflow_info(closed, shard))
                if latency_trace.enabled:
                    latency_trace.stamp("start", workflow_id, proposed_s, started_s,
                                        latency_trace.now_s())
                return answer
            finally:
                if waiter is not None:
                    dispatcher.drop_waiter(workflow_id, waiter)

        async def start(replica, dispatcher):
            # Eager start: an idle supervisor of this type gets the first workflow task
            # in the start's own command (no `assign` commit before it runs).
            session = dispatcher.eager_session(keys.workflow_queue_name(workflow_type))
            reserved = dispatcher.reserve_eager(session, 1) if session is not None else 0
            data = commands.start_workflow(
                request_id=request_id, time_ms=int(time.time() * 1000), workflow_id=workflow_id,
                workflow_type=workflow_type, input_payload=payload, run_id=uuid.uuid4().hex,
                reuse_policy=policy, execution_timeout_ms=request.execution_timeout_ms,
                allow_undeclared_type=request.allow_undeclared_type,
                eager={"supervisor_id": session.supervisor_id, "items": reserved}
                if reserved else None)
            try:
                ok = await replica.propose(data)
            finally:
                if reserved:
                    dispatcher.settle_eager(session, request_id, reserved)
            return pb.StartWorkflowResponse(run_id=ok["run_id"], started=ok["started"], shard=shard)

        async def remote(address):
            forwarded = pb.StartWorkflowRequest()
            forwarded.CopyFrom(request)
            forwarded.request_id = request_id
            return await self.router.flow_stub(address).StartWorkflow(
                forwarded, metadata=forward_metadata(), timeout=FORWARD_TIMEOUT_S + wait_s)

        return await self.router.on_leader(shard, context, local, remote)

    @rpc
    async def DescribeWorkflow(self, request, context):
        return await self.describe_workflow(request, context)

    async def _close_request(self, kind: str, request, context, method: str):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        request_id = validate.request_id(request.request_id or uuid.uuid4().hex)
        reason = request.reason[:4096]
        shard = self.router.shard_of(workflow_id)

        async def local(replica):
            return await replica.propose(commands.close_request(
                kind, request_id=request_id, time_ms=int(time.time() * 1000),
                workflow_id=workflow_id, run_id=run_id, reason=reason))

        async def remote(address):
            forwarded = type(request)()
            forwarded.CopyFrom(request)
            forwarded.request_id = request_id
            answer = await getattr(self.router.flow_stub(address), method)(
                forwarded, metadata=forward_metadata(), timeout=FORWARD_TIMEOUT_S)
            return {"run_id": answer.run_id}

        return (await self.router.on_leader(shard, context, local, remote))["run_id"]

    @rpc
    async def CancelWorkflow(self, request, context):
        run_id = await self._close_request(commands.CANCEL_WORKFLOW, request, context,
                                           "CancelWorkflow")
        return pb.CancelWorkflowResponse(run_id=run_id)

    @rpc
    async def TerminateWorkflow(self, request, context):
        run_id = await self._close_request(commands.TERMINATE_WORKFLOW, request, context,
                                           "TerminateWorkflow")
        return pb.TerminateWorkflowResponse(run_id=run_id)

    @rpc
    async def GetWorkflowHistory(self, request, context):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        page_size = min(request.page_size or limits.history_page_size_default,
                        limits.history_page_size_max)
        shard = self.router.shard_of(workflow_id)

        async def local(replica):
            page = await replica.read(lambda txn: queries.history_page(
                txn, workflow_id, run_id, after_event_id=request.after_event_id,
                page_size=page_size))
            return pb.GetWorkflowHistoryResponse(
                run_id=page["run_id"], events=[codec.pack(e) for e in page["events"]],
                more=page["more"])

        async def remote(address):
            return await self.router.flow_stub(address).GetWorkflowHistory(
                request, metadata=forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    @rpc
    async def WaitWorkflow(self, request, context):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        wait_s = min(request.wait_ms, limits.wait_workflow_ms_max) / 1000
        shard = self.router.shard_of(workflow_id)

        async def local(replica):
            dispatcher = self.dispatchers[shard]
            waiter = dispatcher.closed_waiter(workflow_id)  # before the read: no lost wake-up
            try:
                record = await replica.read(lambda txn: queries.describe(txn, workflow_id, run_id))
                if record["status"] == model.RUNNING and wait_s > 0:
                    run = record["run_id"]
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), wait_s)
                        # This leader committed the close and LMDB holds it: a closed run
                        # never changes again, so no barrier (a Raft round) is needed.
                        with replica.committed.read() as txn:
                            record = queries.describe(txn, workflow_id, run)
                    except TimeoutError:
                        record = await replica.read(
                            lambda txn: queries.describe(txn, workflow_id, run))
            finally:
                dispatcher.drop_waiter(workflow_id, waiter)
            return pb.DescribeWorkflowResponse(workflow=workflow_info(record, shard))

        async def remote(address):
            return await self.router.flow_stub(address).WaitWorkflow(
                request, metadata=forward_metadata(), timeout=FORWARD_TIMEOUT_S + wait_s)

        return await self.router.on_leader(shard, context, local, remote)

    @rpc
    async def ListWorkflows(self, request, context):
        return await self.list_workflows(request, context)

    @rpc
    async def ListSupervisors(self, request, context):
        return await self.list_supervisors(request, context)

    # Schedules: flow.schedule_service.
    @rpc
    async def CreateSchedule(self, request, context):
        return await self.create_schedule(request, context)

    @rpc
    async def UpdateSchedule(self, request, context):
        return await self.update_schedule(request, context)

    @rpc
    async def PatchSchedule(self, request, context):
        return await self.patch_schedule(request, context)

    @rpc
    async def DeleteSchedule(self, request, context):
        return await self.delete_schedule(request, context)

    @rpc
    async def DescribeSchedule(self, request, context):
        return await self.describe_schedule(request, context)

    @rpc
    async def ListSchedules(self, request, context):
        return await self.list_schedules(request, context)

    # Signals, workflow state, broadcast variables: flow.state_service.
    @rpc
    async def SignalWorkflow(self, request, context):
        return await self.signal_workflow(request, context)

    @rpc
    async def GetWorkflowState(self, request, context):
        return await self.get_workflow_state(request, context)

    @rpc
    async def SetBroadcast(self, request, context):
        return await self.set_broadcast(request, context)

    @rpc
    async def GetBroadcast(self, request, context):
        return await self.get_broadcast(request, context)

    async def WatchBroadcasts(self, request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"WatchBroadcasts: the request is not a valid protobuf "
                                f"message: {request.error}")
            return
        async for message in self.watch_broadcasts(request, context):
            yield message

    @rpc
    async def GetClusterStatus(self, request, context):
        local = local_status(self.cfg, self.router.replicas)
        peers = await asyncio.gather(*(
            self._peer_status(node) for node in self.cfg.peers()))
        by_node = {self.cfg.node_id: local, **{n.id: s for n, s in zip(self.cfg.peers(), peers)}}
        shards = []
        for shard in range(self.cfg.shards):
            replicas = [by_node[n.id][shard] for n in self.cfg.nodes]
            leaders = {r.address for r in replicas if r.role == "leader" and r.reachable}
            replica = self.router.replicas[shard]
            shards.append(pb.ShardStatus(
                shard=shard, leader=next(iter(leaders)) if len(leaders) == 1 else "",
                replicas=replicas, queue_depths=replica.queue_depths()))
        return pb.GetClusterStatusResponse(shard_count=self.cfg.shards, shards=shards,
                                           answered_by=self.cfg.node_id)

    async def _peer_status(self, node) -> list:
        try:
            answer = await self.router.peer_stub(node.client).GetLocalStatus(
                pb.GetLocalStatusRequest(), timeout=PEER_STATUS_TIMEOUT_S)
            return list(answer.replicas)
        except grpc.aio.AioRpcError:
            return [pb.ReplicaStatus(node_id=node.id, address=node.client, role="unreachable",
                                     reachable=False) for _ in range(self.cfg.shards)]

    @rpc
    async def GetShardMap(self, request, context):
        return pb.GetShardMapResponse(
            shard_count=self.cfg.shards,
            leaders=[(self.cfg.me.client if r.is_leader() else r.leader_hint()) or ""
                     for r in self.router.replicas])


def local_status(cfg: NodeConfig, replicas: list[ShardReplica]) -> list:
    out = []
    for replica in replicas:
        s = replica.status()
        leader = s.get("leader")
        node = cfg.node_by_raft_address(replica.shard, leader) if leader else None
        out.append(pb.ReplicaStatus(
            node_id=cfg.node_id, address=cfg.me.client, role=s.get("role", "follower"),
            term=s.get("term", 0), commit_index=s.get("commit_index", 0),
            applied_index=s.get("applied_index", 0), log_length=s.get("log_length", 0),
            leader=node.client if node else "", reachable=True))
    return out


class PeerService(pb_grpc.PeerServicer):

    def __init__(self, cfg: NodeConfig, router: Router):
        self.cfg = cfg
        self.router = router

    @rpc
    async def GetLocalStatus(self, request, context):
        return pb.GetLocalStatusResponse(node_id=self.cfg.node_id,
                                         replicas=local_status(self.cfg, self.router.replicas))

    @rpc
    async def ListShard(self, request, context):
        if request.shard >= self.cfg.shards:
            raise InvalidArgument(f"shard {request.shard} does not exist "
                                  f"(the cluster has {self.cfg.shards})", field="shard")
        order, flt = list_request(request)
        page = await list_shard(self.router, request.shard, context, order, flt,
                                bytes(request.after),
                                min(request.page_size or 1, limits.list_page_size_max))
        return pb.ListShardResponse(workflows=page["items"], exhausted=page["exhausted"],
                                    resume_after=page["resume_after"] or b"")

    @rpc
    async def ListShardSupervisors(self, request, context):
        if request.shard >= self.cfg.shards:
            raise InvalidArgument(f"shard {request.shard} does not exist "
                                  f"(the cluster has {self.cfg.shards})", field="shard")
        replica = self.router.replicas[request.shard]
        if not replica.is_leader():
            raise NotLeader(f"this node does not lead shard {request.shard}",
                            shard=request.shard, leader_hint=replica.leader_hint())
        return supervisors_answer(await replica.read(queries.supervisors))

    @rpc
    async def ListShardSchedules(self, request, context):
        if request.shard >= self.cfg.shards:
            raise InvalidArgument(f"shard {request.shard} does not exist", field="shard")
        shard, after = request.shard, request.after
        page_size = min(request.page_size or 1, limits.schedules_page_size_max)
        replica = self.router.replicas[shard]
        if not replica.is_leader():
            raise NotLeader(f"this node does not lead shard {shard}", shard=shard,
                            leader_hint=replica.leader_hint())
        page = await replica.read(lambda txn: schedules_page(txn, after, page_size))
        return pb.ListShardSchedulesResponse(
            schedules=[schedule_info(r, shard) for r in page["items"]],
            resume_after=page["resume_after"] or "", exhausted=page["exhausted"])

    @rpc
    async def DeliverOutbox(self, request, context):
        if request.shard >= self.cfg.shards:
            raise InvalidArgument(f"shard {request.shard} does not exist", field="shard")
        entry = codec.decode_payload(bytes(request.entry), what="outbox entry")
        if not isinstance(entry, dict) or entry.get("kind") not in outbox.KINDS:
            raise InvalidArgument(f"an outbox entry is a map of kind {', '.join(outbox.KINDS)}",
                                  field="entry")
        try:
            await outbox.propose_here(self.router.replicas[request.shard], entry)
        except KeyError as exc:
            raise InvalidArgument(f"outbox entry lacks {exc}", field="entry") from None
        return pb.DeliverOutboxResponse()
