"""The RPCs that look at workflows and supervisors (a mixin of service.FlowService):
describe with pending tasks and timers, list across shards (flow.visibility for one
shard's page, flow.listing for the merge and page tokens), and the supervisors connected.

Every read runs on the owning shard's leader after a log barrier (linearizable per
shard); a listing asks every shard's leader at once and merges their pages exactly.
"""

from __future__ import annotations

import asyncio

import grpc

from coda.api import flow_pb2 as pb
from coda.errors import CodaError, InvalidArgument
from coda.flow import limits, listing, model, queries, validate, visibility, wire

FORWARD_TIMEOUT_S = limits.proposal_timeout_s + 2.0


def _forward_metadata() -> tuple:
    return ((wire.FORWARDED_METADATA_KEY, "1"),)


def failure_text(failure) -> str:
    if not failure:
        return ""
    if isinstance(failure, dict):
        kind, message = failure.get("type"), failure.get("message", "")
        return f"{kind}: {message}" if kind else str(message)
    return str(failure)


def workflow_info(record: dict, shard: int) -> pb.WorkflowInfo:
    return pb.WorkflowInfo(
        workflow_id=record["workflow_id"], run_id=record["run_id"],
        workflow_type=record["workflow_type"], status=record["status"],
        start_time_ms=record["start_time_ms"], close_time_ms=record.get("close_time_ms") or 0,
        attempt=record.get("attempt", 1), history_length=record.get("history_length", 0),
        shard=shard, result=record.get("result") or b"",
        failure=failure_text(record.get("failure")),
        queued_on=record["queue"] if record.get("queue_seq") is not None else "",
        workflow_task_failure=failure_text(record.get("wft_failure")),
        open_tasks=record.get("open_tasks", 0),
        cancel_requested=bool(record.get("cancel_requested")),
        continued_as_run_id=record.get("continued_as") or "",
        continued_from_run_id=record.get("continued_from") or "",
        history_bytes=record.get("history_bytes", 0),
        continue_as_new_suggested=bool(record.get("continue_as_new_suggested")),
        build_id=record.get("build_id") or "")


def describe_answer(record: dict, pending: dict | None, shard: int) -> pb.DescribeWorkflowResponse:
    answer = pb.DescribeWorkflowResponse(workflow=workflow_info(record, shard))
    if pending:
        answer.pending_tasks.extend(pb.PendingTask(
            key=t["key"], task_type=t["task_type"], state=t["state"], attempt=t["attempt"],
            scheduled_time_ms=t["scheduled_time_ms"], supervisor_id=t["supervisor_id"],
            last_failure=failure_text(t["last_error"]), retry_time_ms=t["retry_time_ms"])
            for t in pending["tasks"])
        answer.pending_timers.extend(pb.PendingTimer(key=t["key"], fire_time_ms=t["fire_time_ms"])
                                     for t in pending["timers"])
        answer.pending_truncated = pending["truncated"]
    return answer


def list_request(request) -> tuple[str, visibility.ListFilter]:
    """The order and filters of a ListWorkflows (or ListShard) request, validated."""
    for status in request.statuses:
        if status not in model.WORKFLOW_STATUSES:
            raise InvalidArgument(f"unknown status {status!r}; one of "
                                  f"{', '.join(model.WORKFLOW_STATUSES)}", field="statuses")
    times = {}
    for name in ("start_time_from_ms", "start_time_to_ms", "close_time_from_ms",
                 "close_time_to_ms"):
        value = getattr(request, name)
        if value < 0:
            raise InvalidArgument(f"{name} must be >= 0 (0: unbounded), not {value}", field=name)
        times[name] = value
    for low, high in (("start_time_from_ms", "start_time_to_ms"),
                      ("close_time_from_ms", "close_time_to_ms")):
        if times[low] and times[high] and times[low] >= times[high]:
            raise InvalidArgument(f"{low} ({times[low]}) must be before {high} "
                                  f"({times[high]})", field=low)
    prefix = request.workflow_id_prefix
    if len(prefix.encode()) > limits.workflow_id_bytes_max:
        raise InvalidArgument("workflow_id_prefix is longer than a workflow id can be",
                              field="workflow_id_prefix")
    flt = visibility.ListFilter(
        statuses=tuple(request.statuses),
        types=tuple(validate.type_name(t) for t in request.workflow_types),
        builds=tuple(validate.identifier(b, "build_id", limits.build_id_bytes_max)
                     for b in request.build_ids),
        id_prefix=prefix, start_min_ms=times["start_time_from_ms"],
        start_max_ms=times["start_time_to_ms"], close_min_ms=times["close_time_from_ms"],
        close_max_ms=times["close_time_to_ms"])
    return visibility.parse_order(request.order_by), flt


def info_cursor(order: str, info: pb.WorkflowInfo) -> bytes:
    return visibility.cursor_key(order, info.workflow_id, info.start_time_ms, info.close_time_ms)


class VisibilityRpcs:
    async def describe_workflow(self, request, context):
        workflow_id = validate.workflow_id(request.workflow_id)
        run_id = validate.run_id(request.run_id) if request.run_id else None
        shard = self.router.shard_of(workflow_id)

        def read(txn):
            record = queries.describe(txn, workflow_id, run_id)
            running = record["status"] == model.RUNNING
            return record, queries.pending(txn, record, limits.describe_pending_max) if running else None

        async def local(replica):
            record, pending = await replica.read(read)
            return describe_answer(record, pending, shard)

        async def remote(address):
            return await self.router.flow_stub(address).DescribeWorkflow(
                request, metadata=_forward_metadata(), timeout=FORWARD_TIMEOUT_S)

        return await self.router.on_leader(shard, context, local, remote)

    async def list_workflows(self, request, context):
        order, flt = list_request(request)
        page_size = min(request.page_size or limits.list_page_size_default,
                        limits.list_page_size_max)
        fingerprint = listing.filter_fingerprint((), (flt.fingerprint_text(),))
        after = listing.decode_cursor(bytes(request.page_token), order, fingerprint)
        pages = await asyncio.gather(*(
            list_shard(self.router, shard, context, order, flt, after, page_size)
            for shard in range(self.cfg.shards)))
        items, next_after = listing.merge_ordered(
            list(pages), page_size, key=lambda info: info_cursor(order, info),
            descending=visibility.descending(order), size_of=lambda info: info.ByteSize(),
            bytes_max=limits.list_page_bytes_max)
        return pb.ListWorkflowsResponse(
            workflows=items, next_page_token=listing.encode_cursor(order, next_after, fingerprint)
            if next_after is not None else b"")

    async def list_supervisors(self, request, context):
        answers = await asyncio.gather(*(
            _shard_supervisors(self.router, shard, context) for shard in range(self.cfg.shards)),
            return_exceptions=True)
        merged: dict[str, dict] = {}
        unanswered = []
        for shard, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                if not isinstance(answer, (CodaError, grpc.aio.AioRpcError)):
                    raise answer
                unanswered.append(shard)
                continue
            for s in answer.supervisors:
                entry = merged.setdefault(s.supervisor_id, {"info": s, "shards": []})
                if s.registered_time_ms > entry["info"].registered_time_ms:
                    entry["info"] = s  # the latest registration says what it runs now
                entry["shards"].append(shard)
        out = []
        for sid in sorted(merged):
            info = pb.SupervisorInfo()
            info.CopyFrom(merged[sid]["info"])
            del info.shards[:]
            info.shards.extend(merged[sid]["shards"])
            out.append(info)
        return pb.ListSupervisorsResponse(supervisors=out, unanswered_shards=unanswered)


def supervisors_answer(rows: list[dict]) -> pb.ListSupervisorsResponse:
    return pb.ListSupervisorsResponse(supervisors=[pb.SupervisorInfo(
        supervisor_id=r["supervisor_id"], build_id=r.get("build_id") or "",
        workflow_types=r.get("workflow_types") or [], task_types=r.get("task_types") or [],
        registered_time_ms=r.get("registered_ms") or 0) for r in rows])


async def _shard_supervisors(router, shard: int, context) -> pb.ListSupervisorsResponse:
    async def local(replica):
        return supervisors_answer(await replica.read(queries.supervisors))

    async def remote(address):
        return await router.peer_stub(address).ListShardSupervisors(
            pb.ListShardSupervisorsRequest(shard=shard), metadata=_forward_metadata(),
            timeout=FORWARD_TIMEOUT_S)

    return await router.on_leader(shard, context, local, remote)


async def list_shard(router, shard: int, context, order: str, flt: visibility.ListFilter,
                     after: bytes, page_size: int) -> dict:
    """One shard's page from its leader: {items: [WorkflowInfo], resume_after, exhausted}."""
    async def local(replica):
        page = await replica.read(lambda txn: visibility.list_page(
            txn, order=order, after=after, flt=flt, page_size=page_size,
            scan_max=limits.list_scan_records_max,
            bytes_max=limits.list_page_bytes_max // router.cfg.shards))
        return dict(page, items=[workflow_info(r, shard) for r in page["items"]])

    async def remote(address):
        answer = await router.peer_stub(address).ListShard(pb.ListShardRequest(
            shard=shard, after=after, order_by=order, statuses=flt.statuses,
            workflow_types=flt.types, build_ids=flt.builds, page_size=page_size,
            workflow_id_prefix=flt.id_prefix, start_time_from_ms=flt.start_min_ms,
            start_time_to_ms=flt.start_max_ms, close_time_from_ms=flt.close_min_ms,
            close_time_to_ms=flt.close_max_ms), metadata=_forward_metadata(),
            timeout=FORWARD_TIMEOUT_S)
        return {"items": list(answer.workflows), "exhausted": answer.exhausted,
                "resume_after": bytes(answer.resume_after) or None}

    return await router.on_leader(shard, context, local, remote)
