"""Delivers each shard's outbox (flow.sm_children) to the shards it is addressed to.

Runs on the shard's leader. Entries are delivered at least once, in batches: each to the
leader of its target shard (this node's replica, or a peer's through `Peer.DeliverOutbox`),
then the batch is removed by one `outbox_done` command. A definite refusal of a child's
start (unknown type, an id already running) is reported back to the parent in that same
command; anything uncertain (no leader, a timeout) is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from coda.api import flow_pb2 as pb
from coda.errors import CodaError, InvalidArgument, NotLeader, Unavailable
from coda.flow import commands, limits, model, wire
from coda.storage import codec, keys

log = logging.getLogger(__name__)

POLL_S = 0.05
RETRY_S = 0.5
DELIVER_TIMEOUT_S = limits.proposal_timeout_s + 2.0
KINDS = ("start_child", "child_closed", "start_scheduled", "schedule_run_closed", "close_run",
         "signal")


def command_for(entry: dict) -> bytes:
    """The command an outbox entry becomes on its target shard (stamped here, its leader)."""
    time_ms = int(time.time() * 1000)
    kind = entry.get("kind")
    if kind == "start_child":
        return commands.start_workflow(
            request_id=entry["request_id"], time_ms=time_ms, workflow_id=entry["workflow_id"],
            workflow_type=entry["workflow_type"], input_payload=entry["input"],
            run_id=uuid.uuid4().hex, reuse_policy=model.ALLOW_DUPLICATE,
            execution_timeout_ms=entry.get("execution_timeout_ms") or 0,
            allow_undeclared_type=False, parent=entry["parent"])
    if kind == "child_closed":
        return commands.child_closed(time_ms=time_ms, entry=entry)
    if kind == "start_scheduled":
        # REJECT_DUPLICATE: one run per (schedule, nominal time), ever (flow.sm_schedules).
        return commands.start_workflow(
            request_id=entry["request_id"], time_ms=time_ms, workflow_id=entry["workflow_id"],
            workflow_type=entry["workflow_type"], input_payload=entry["input"],
            run_id=uuid.uuid4().hex, reuse_policy=model.REJECT_DUPLICATE,
            execution_timeout_ms=entry.get("execution_timeout_ms") or 0,
            allow_undeclared_type=True, schedule=entry["schedule"],
            retry_deadline_ms=entry.get("retry_deadline_ms") or 0)
    if kind == "schedule_run_closed":
        return commands.schedule_run_closed(time_ms=time_ms, entry=entry)
    if kind == "signal":
        return commands.signal_workflow(
            request_id=entry["request_id"], time_ms=time_ms, workflow_id=entry["workflow_id"],
            run_id=None, name=entry["name"], payload=entry["payload"],
            sender={k: entry["sender"][k] for k in ("workflow_id", "run_id")})
    if kind == "close_run":
        how = (commands.CANCEL_WORKFLOW if entry.get("how") == "cancel"
               else commands.TERMINATE_WORKFLOW)
        return commands.close_request(how, request_id=entry["request_id"], time_ms=time_ms,
                                      workflow_id=entry["workflow_id"], run_id=None,
                                      reason=entry.get("reason") or "")
    raise InvalidArgument(f"unknown outbox entry kind {kind!r}", field="entry")


def route_of(entry: dict) -> str:
    """The id whose shard an entry goes to: a workflow's, or a schedule's ("route")."""
    return entry.get("route") or entry["workflow_id"]


async def propose_here(replica, entry: dict) -> None:
    if not replica.is_leader():
        raise NotLeader(f"this node does not lead shard {replica.shard}", shard=replica.shard,
                        leader_hint=replica.leader_hint())
    await replica.propose(command_for(entry))


class OutboxCourier:
    def __init__(self, replica, dispatcher, router):
        self.replica = replica
        self.dispatcher = dispatcher
        self.router = router

    async def run(self) -> None:
        while True:
            if not self.dispatcher.active:
                await asyncio.sleep(POLL_S * 2)
                continue
            batch = self._pending()
            if not batch:
                await asyncio.sleep(POLL_S)
                continue
            outcomes = await asyncio.gather(*(self._deliver(entry) for _, entry in batch))
            done = [seq for (seq, _), o in zip(batch, outcomes) if o is None]
            refused = [{"seq": seq, "error": o.to_wire()} for (seq, _), o in zip(batch, outcomes)
                       if isinstance(o, CodaError) and o.definite and not o.retryable]
            if done or refused:
                try:
                    await self.replica.propose(commands.outbox_done(
                        time_ms=int(time.time() * 1000), done=done, refused=refused))
                except CodaError as exc:
                    log.info("shard %d: outbox_done not committed: %s", self.replica.shard, exc)
            if len(done) + len(refused) < len(batch):
                await asyncio.sleep(RETRY_S)

    def _pending(self) -> list[tuple[int, dict]]:
        out = []
        with self.replica.committed.read() as txn:
            for key, raw in txn.scan(keys.OUTBOX):
                out.append((keys.from_u64(key), codec.unpack(raw)))
                if len(out) >= limits.outbox_batch_max:
                    break
        return out

    async def _deliver(self, entry: dict) -> CodaError | None:
        """None when delivered; the error otherwise (retried unless definite and final)."""
        try:
            target = self.router.shard_of(route_of(entry))
            replica = self.router.replicas[target]
            if replica.is_leader():
                await propose_here(replica, entry)
                return None
            hint = replica.leader_hint()
            if hint is None:
                raise Unavailable(f"shard {target} has no leader")
            try:
                await self.router.peer_stub(hint).DeliverOutbox(
                    pb.DeliverOutboxRequest(shard=target, entry=codec.pack(entry)),
                    timeout=DELIVER_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                raise wire.error_from_rpc(exc, target=hint) from None
            return None
        except CodaError as exc:
            return exc
