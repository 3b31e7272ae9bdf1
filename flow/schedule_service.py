"""The schedule RPCs of the Flow service (a mixin of service.FlowService), and the
conversions between schedule records (flow.sm_schedules) and their protobuf messages.

A schedule's requests go to the leader of the shard its id hashes to, like a workflow's;
every change is one replicated command, validated by the state machine (bad cron, time
zone or overlap policy answer INVALID_ARGUMENT naming the field).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from coda.api import flow_pb2 as pb
from coda.errors import InvalidArgument, NotFound
from coda.flow import commands, limits, listing, schedule_spec, sm_schedules, validate, wire
from coda.storage import codec, keys

NEXT_TIMES_SHOWN = 5
FORWARD_TIMEOUT_S = limits.proposal_timeout_s + 2.0


# --- records <-> messages -------------------------------------------------------------------

def spec_to_dict(spec: pb.ScheduleSpec) -> dict:
    return {"cron": spec.cron, "interval_ms": spec.interval_ms, "offset_ms": spec.offset_ms,
            "timezone": spec.timezone, "jitter_ms": spec.jitter_ms,
            "start_time_ms": spec.start_time_ms, "end_time_ms": spec.end_time_ms}


def action_to_dict(action: pb.ScheduleAction) -> dict:
    return {"workflow_type": action.workflow_type, "input": bytes(action.input),
            "execution_timeout_ms": action.execution_timeout_ms}


def policy_to_dict(policy: pb.SchedulePolicy) -> dict:
    return {"overlap": policy.overlap, "catchup_window_ms": policy.catchup_window_ms,
            "pause_on_failure": policy.pause_on_failure}


def next_times(record: dict, count: int = NEXT_TIMES_SHOWN) -> list[int]:
    if record["paused"]:
        return []
    out, nominal = [], record["next_nominal_ms"]
    while nominal is not None and len(out) < count:
        out.append(nominal)
        nominal = schedule_spec.next_after(record["spec"], nominal)
    return out


def schedule_info(record: dict, shard: int) -> pb.ScheduleInfo:
    counts = record["counts"]
    return pb.ScheduleInfo(
        schedule_id=record["schedule_id"], spec=pb.ScheduleSpec(**record["spec"]),
        action=pb.ScheduleAction(**record["action"]),
        policy=pb.SchedulePolicy(**record["policy"]), paused=record["paused"],
        note=record["note"], next_action_times_ms=next_times(record),
        running=[pb.ScheduleRun(workflow_id=r["workflow_id"], nominal_time_ms=r["nominal_ms"],
                                closing=r.get("closing") or "") for r in record["running"]],
        buffered_times_ms=[b["nominal_ms"] for b in record["buffered"]],
        recent=[pb.ScheduleActionRecord(
            action=a["action"], nominal_time_ms=a.get("nominal_ms") or 0, at_ms=a["at_ms"],
            source=a.get("source", ""), workflow_id=a.get("workflow_id", ""),
            status=a.get("status", ""), detail=a.get("detail", "")) for a in record["recent"]],
        started=counts["started"], skipped=counts["skipped"], missed=counts["missed"],
        created_ms=record["created_ms"], updated_ms=record["updated_ms"], shard=shard)


def list_page(txn, after: str, page_size: int) -> dict:
    """Schedules with id > after, in id order: {items, resume_after, exhausted}."""
    items, start = [], (after.encode() + b"\x00") if after else b""
    for key, raw in txn.scan(keys.SCHEDULES, start=start):
        if len(items) >= page_size:
            return {"items": items, "resume_after": items[-1]["schedule_id"],
                    "exhausted": False}
        items.append(sm_schedules.load(txn, key.decode()))
    return {"items": items, "resume_after": None, "exhausted": True}


def _forward_metadata() -> tuple:
    return ((wire.FORWARDED_METADATA_KEY, "1"),)


def _request_id(value: str) -> str:
    return validate.request_id(value or uuid.uuid4().hex)


# --- the RPCs -------------------------------------------------------------------------------

class ScheduleRpcs:
    """Mixed into FlowService, which gives `router` and `cfg`, and whose RPC methods of the
    same names (wrapped by service.rpc: metrics, error trailers) call these."""

    async def _schedule_command(self, kind: str, request, context, method: str, body: dict):
        schedule_id = sm_schedules.schedule_id_of(request.schedule_id)
        request_id = _request_id(request.request_id)
        shard = self.router.shard_of(schedule_id)

        async def local(replica):
            await replica.propose(commands.schedule_command(
                kind, request_id=request_id, time_ms=int(time.time() * 1000),
                body=dict(body, schedule_id=schedule_id)))
            return pb.ScheduleResponse(schedule_id=schedule_id, shard=shard)

        async def remote(address):
            forwarded = type(request)()
            forwarded.CopyFrom(request)
            forwarded.request_id = request_id
            return await getattr(self.router.flow_stub(address), method)(
                forwarded, metadata=_forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    def _checked_input(self, action: pb.ScheduleAction) -> dict:
        out = action_to_dict(action)
        if not out["input"]:
            out["input"] = codec.pack({})
        if len(out["input"]) > self.cfg.payload_bytes_max:
            raise InvalidArgument(f"the scheduled workflow's input is {len(out['input'])} "
                                  f"bytes, over the limit of {self.cfg.payload_bytes_max}",
                                  field="input")
        codec.decode_payload(out["input"], what="scheduled workflow input")
        return out

    def _definition(self, request) -> dict:
        if not request.HasField("spec") or not request.HasField("action"):
            raise InvalidArgument("a schedule needs a spec and an action", field="spec")
        return {"spec": spec_to_dict(request.spec), "action": self._checked_input(request.action),
                "policy": policy_to_dict(request.policy),
                "allow_undeclared_type": request.allow_undeclared_type}

    async def create_schedule(self, request, context):
        body = dict(self._definition(request), paused=request.paused, note=request.note)
        return await self._schedule_command(commands.CREATE_SCHEDULE, request, context,
                                            "CreateSchedule", body)

    async def update_schedule(self, request, context):
        return await self._schedule_command(commands.UPDATE_SCHEDULE, request, context,
                                            "UpdateSchedule", self._definition(request))

    async def patch_schedule(self, request, context):
        body = {"op": request.op, "note": request.note, "overlap": request.overlap,
                "start_time_ms": request.start_time_ms, "end_time_ms": request.end_time_ms}
        return await self._schedule_command(commands.PATCH_SCHEDULE, request, context,
                                            "PatchSchedule", body)

    async def delete_schedule(self, request, context):
        return await self._schedule_command(commands.DELETE_SCHEDULE, request, context,
                                            "DeleteSchedule", {})

    async def describe_schedule(self, request, context):
        schedule_id = sm_schedules.schedule_id_of(request.schedule_id)
        shard = self.router.shard_of(schedule_id)

        def read(txn):
            record = sm_schedules.load(txn, schedule_id)
            if record is None:
                raise NotFound(f"schedule {schedule_id!r} not found", schedule_id=schedule_id)
            return record

        async def local(replica):
            return pb.DescribeScheduleResponse(
                schedule=schedule_info(await replica.read(read), shard))

        async def remote(address):
            return await self.router.flow_stub(address).DescribeSchedule(
                request, metadata=_forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    async def list_schedules(self, request, context):
        page_size = min(request.page_size or limits.list_page_size_default,
                        limits.schedules_page_size_max)
        fingerprint = listing.filter_fingerprint((), ("schedules",))
        after = listing.decode_token(bytes(request.page_token), fingerprint)
        pages = await asyncio.gather(*(
            list_shard_schedules(self.router, shard, context, after, page_size,
                                 _forward_metadata())
            for shard in range(self.cfg.shards)))
        items, next_after = listing.merge(list(pages), page_size,
                                          key=lambda info: info.schedule_id)
        return pb.ListSchedulesResponse(
            schedules=items,
            next_page_token=listing.encode_token(next_after, fingerprint) if next_after else b"")


async def list_shard_schedules(router, shard: int, context, after: str, page_size: int,
                               metadata) -> dict:
    async def local(replica):
        page = await replica.read(lambda txn: list_page(txn, after, page_size))
        return dict(page, items=[schedule_info(r, shard) for r in page["items"]])

    async def remote(address):
        answer = await router.peer_stub(address).ListShardSchedules(
            pb.ListShardSchedulesRequest(shard=shard, after=after, page_size=page_size),
            metadata=metadata, timeout=FORWARD_TIMEOUT_S)
        return {"items": list(answer.schedules), "resume_after": answer.resume_after or None,
                "exhausted": answer.exhausted}

    return await router.on_leader(shard, context, local, remote)
