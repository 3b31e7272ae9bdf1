"""The RPCs that talk to running workflows (a mixin of service.FlowService): signals,
workflow state reads, broadcast variables and their watch streams (flow/sm_state.py).

Signals and broadcast writes are one replicated command each, deduplicated by request id.
State and broadcast reads run after a log barrier on the owning shard's leader:
linearizable. WatchBroadcasts is served by the leader only (never forwarded: a stream
through a second node would outlive that node's view of the leadership); elsewhere it
answers NOT_LEADER with the leader's address.
"""

from __future__ import annotations

import time
import uuid

import grpc

from coda.api import flow_pb2 as pb
from coda.errors import CodaError, InvalidArgument, NotLeader
from coda.flow import commands, limits, metrics, queries, sm_state, validate, wire
from coda.storage import codec

FORWARD_TIMEOUT_S = limits.proposal_timeout_s + 2.0


def _forward_metadata() -> tuple:
    return ((wire.FORWARDED_METADATA_KEY, "1"),)


def broadcast_message(name: str, version: int, found: bool, value,
                      updated_ms: int = 0) -> pb.BroadcastValue:
    return pb.BroadcastValue(name=name, version=version, found=found,
                             value=value if found and value is not None else b"",
                             updated_ms=updated_ms)


class StateRpcs:
    """Mixed into FlowService (which gives `router`, `cfg`, `dispatchers`); its RPC
    methods of the same names, wrapped by service.rpc, call these."""

    def _checked_payload(self, payload: bytes, what: str) -> bytes:
        payload = payload or codec.pack(None)
        if len(payload) > self.cfg.payload_bytes_max:
            raise InvalidArgument(f"{what} is {len(payload)} bytes, over the limit of "
                                  f"{self.cfg.payload_bytes_max} bytes", field=what,
                                  size_bytes=len(payload), limit_bytes=self.cfg.payload_bytes_max)
        codec.decode_payload(payload, what=what)
        return payload

    async def _propose_on(self, shard: int, request, context, method: str, data_for,
                          answer_for):
        request_id = validate.request_id(request.request_id or uuid.uuid4().hex)

        async def local(replica):
            return answer_for(await replica.propose(data_for(request_id)))

        async def remote(address):
            forwarded = type(request)()
            forwarded.CopyFrom(request)
            forwarded.request_id = request_id
            return await getattr(self.router.flow_stub(address), method)(
                forwarded, metadata=_forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    async def _read_on(self, shard: int, request, context, method: str, read, answer_for):
        async def local(replica):
            return answer_for(await replica.read(read))

        async def remote(address):
            return await getattr(self.router.flow_stub(address), method)(
                request, metadata=_forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    async def signal_workflow(self, request, context):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        name = sm_state.signal_name(request.name)
        payload = self._checked_payload(bytes(request.payload), "signal payload")
        return await self._propose_on(
            self.router.shard_of(workflow_id), request, context, "SignalWorkflow",
            lambda request_id: commands.signal_workflow(
                request_id=request_id, time_ms=int(time.time() * 1000),
                workflow_id=workflow_id, run_id=run_id, name=name, payload=payload,
                history_limit=self.cfg.history_limit()),
            lambda ok: pb.SignalWorkflowResponse(run_id=ok["run_id"]))

    async def get_workflow_state(self, request, context):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        key = sm_state.state_key(request.key)
        return await self._read_on(
            self.router.shard_of(workflow_id), request, context, "GetWorkflowState",
            lambda txn: queries.state_value(txn, workflow_id, run_id, key),
            lambda found: pb.GetWorkflowStateResponse(run_id=found["run_id"],
                                                      value=found["value"]))

    async def set_broadcast(self, request, context):
        name = sm_state.broadcast_name(request.name)
        value = None if request.delete else self._checked_payload(bytes(request.value),
                                                                  "broadcast value")
        if_version = request.if_version if request.HasField("if_version") else None
        shard = self.router.shard_of(name)
        return await self._propose_on(
            shard, request, context, "SetBroadcast",
            lambda request_id: commands.set_broadcast(
                request_id=request_id, time_ms=int(time.time() * 1000), name=name,
                value=value, if_version=if_version),
            lambda ok: pb.SetBroadcastResponse(version=ok["version"], shard=shard))

    async def get_broadcast(self, request, context):
        name = sm_state.broadcast_name(request.name)
        return await self._read_on(
            self.router.shard_of(name), request, context, "GetBroadcast",
            lambda txn: queries.broadcast_value(txn, name),
            lambda b: broadcast_message(name, b["version"], b["found"], b["value"],
                                        b["updated_ms"]))

    def _watched(self, request) -> tuple[int, dict[str, int]]:
        if request.shard >= self.cfg.shards:
            raise InvalidArgument(f"shard {request.shard} does not exist (the cluster has "
                                  f"{self.cfg.shards})", field="shard")
        if len(request.known) > limits.broadcast_watch_names_max:
            raise InvalidArgument(f"a watch follows at most {limits.broadcast_watch_names_max} "
                                  "names", field="known")
        known = {}
        for item in request.known:
            name = sm_state.broadcast_name(item.name)
            if self.router.shard_of(name) != request.shard:
                raise InvalidArgument(f"broadcast {name!r} lives on shard "
                                      f"{self.router.shard_of(name)}, not {request.shard}",
                                      field="known")
            known[name] = item.version
        return request.shard, known

    async def watch_broadcasts(self, request, context):
        """An async generator of BroadcastValue (see the RPC's comment)."""
        try:
            shard, known = self._watched(request)
            dispatcher = self.dispatchers[shard]
            if not dispatcher.active:
                replica = dispatcher.replica
                raise NotLeader(f"this node does not lead shard {shard}", shard=shard,
                                leader_hint=replica.leader_hint())
            # Registered before the read: a version committed in between is in one or both.
            watch = dispatcher.broadcast_watchers.add(known)
        except CodaError as exc:
            metrics.grpc_requests.labels("WatchBroadcasts", wire.status_for(exc).name).inc()
            context.set_trailing_metadata(wire.error_trailers(exc))
            await context.abort(wire.status_for(exc), exc.message)
            return
        metrics.grpc_requests.labels("WatchBroadcasts", "OK").inc()
        try:
            current = await dispatcher.replica.read(
                lambda txn: {n: queries.broadcast_value(txn, n) for n in known})
            for name, b in current.items():
                if b["version"] != known[name]:
                    known[name] = b["version"]
                    yield broadcast_message(name, b["version"], b["found"], b["value"],
                                            b["updated_ms"])
            while True:
                update = await watch.queue.get()
                if update is None:
                    return
                name, version, found, value, updated_ms = update
                if version > known.get(name, 0):
                    known[name] = version
                    yield broadcast_message(name, version, found, value, updated_ms)
        except CodaError as exc:  # the barrier read: not the leader any more, overloaded
            context.set_trailing_metadata(wire.error_trailers(exc))
            await context.abort(wire.status_for(exc), exc.message)
        except grpc.aio.AbortError:
            raise
        finally:
            dispatcher.broadcast_watchers.remove(watch)
