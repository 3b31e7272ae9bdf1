"""The Coda client: `coda.Client` (asyncio) and `SyncClient` (for scripts and the CLI).

`start_workflow` answers a handle (`WorkflowHandle`, or `SyncWorkflowHandle` from a
SyncClient): `result()` long-polls WaitWorkflow until the run closes and answers its
result, or raises the coda.errors.WorkflowError subclass of its closing status;
`cancel()`, `terminate()`, `history()`, `describe()` act on the same run.

Talks gRPC to any Flow node (several addresses may be given, comma-separated; the client
moves to the next on connection trouble). Retries what is safe to retry until a deadline:
UNAVAILABLE, NOT_LEADER, RESOURCE_EXHAUSTED, and indeterminate outcomes of requests that
carry a request id (a retried start reuses its request id, so it never creates a second
workflow). What still fails is raised as the CodaError the server sent.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from dataclasses import dataclass

import grpc

from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda import errors
from coda.client import sdk
from coda.client.broadcasts import Broadcasts, SyncBroadcasts
from coda.client.runtime_state import MISSING
from coda.client.schedules import (ScheduleHandle, ScheduleMethods, SyncScheduleHandle,
                                   SyncScheduleMethods)
from coda.errors import CodaError, Indeterminate, InvalidArgument, WaitTimeout
from coda.flow import limits, model, validate
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
# One WaitWorkflow long poll asks the server to hold the call this long (it may cap it);
# result() repeats polls until the run closes or the caller's timeout passes.
WAIT_POLL_MS = 20_000
# A server that answers RUNNING early (a lower cap) is not polled faster than this.
WAIT_POLL_INTERVAL_MIN_S = 0.2
UINT32_MAX = 2**32 - 1
EXECUTION_TIMEOUT_MS_MAX = 2**63 - 1

# How a run that closed without a result surfaces: the error class and its verb.
ERROR_BY_STATUS = {
    model.FAILED: (errors.WorkflowFailedError, "failed"),
    model.CANCELLED: (errors.WorkflowCancelledError, "was cancelled"),
    model.TERMINATED: (errors.WorkflowTerminatedError, "was terminated"),
    model.TIMED_OUT: (errors.WorkflowTimedOutError, "timed out"),
    model.CONTINUED_AS_NEW: (errors.WorkflowContinuedAsNewError,
                             "continued as new (its result is the new run's)"),
}


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
        # While RUNNING: why its last workflow task failed (e.g. a NonDeterminismError).
        "workflow_task_failure": info.workflow_task_failure or None,
        "open_tasks": info.open_tasks, "cancel_requested": info.cancel_requested,
        "continued_as_run_id": info.continued_as_run_id or None,
        "continued_from_run_id": info.continued_from_run_id or None,
        "history_bytes": info.history_bytes,
        "continue_as_new_suggested": info.continue_as_new_suggested,
        "build_id": info.build_id or None,
    }


def pending_task_to_dict(task: pb.PendingTask) -> dict:
    return {"key": task.key, "task_type": task.task_type, "state": task.state,
            "attempt": task.attempt, "scheduled_time_ms": task.scheduled_time_ms,
            "supervisor_id": task.supervisor_id or None,
            "last_failure": task.last_failure or None,
            "retry_time_ms": task.retry_time_ms or None}


def workflow_result(info: dict):
    """The result of the closed run that `info` (a describe_workflow dict) describes, or
    raise the WorkflowError of its closing status (details: workflow_id, run_id, status,
    failure)."""
    status, where = info["status"], f"workflow {info['workflow_id']} run {info['run_id']}"
    if status == model.COMPLETED:
        return info["result"]
    if status not in ERROR_BY_STATUS:
        raise InvalidArgument(f"{where} has status {status!r}, not a closed status: it has "
                              "no result yet", field="status")
    error_class, verb = ERROR_BY_STATUS[status]
    failure = info["failure"]
    raise error_class(f"{where} {verb}" + (f": {failure}" if failure else ""),
                      workflow_id=info["workflow_id"], run_id=info["run_id"], status=status,
                      failure=failure)


def workflow_args(args) -> dict:
    """The workflow's keyword arguments: a dict with str keys (None: no arguments)."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise InvalidArgument("workflow args must be a dict of the workflow's keyword "
                              f"arguments, got {type(args).__name__}", field="args")
    for key in args:
        if not isinstance(key, str):
            raise InvalidArgument(f"workflow args keys must be argument names (str), got "
                                  f"{key!r}", field="args")
    return args


def execution_timeout_ms(execution_timeout: float | None) -> int:
    """Seconds (None: no timeout) -> the wire's milliseconds (0: no timeout)."""
    if execution_timeout is None:
        return 0
    if (not isinstance(execution_timeout, (int, float)) or isinstance(execution_timeout, bool)
            or not math.isfinite(execution_timeout) or execution_timeout <= 0):
        raise InvalidArgument("execution_timeout must be a positive number of seconds, got "
                              f"{execution_timeout!r}", field="execution_timeout")
    timeout_ms = max(1, math.ceil(execution_timeout * 1000))
    if timeout_ms > EXECUTION_TIMEOUT_MS_MAX:
        raise InvalidArgument(f"execution_timeout of {execution_timeout!r} seconds is too "
                              "large", field="execution_timeout")
    return timeout_ms


def workflow_type_of(workflow_type) -> tuple[str, float | None]:
    """A type name, or a @coda.workflow function -> (its name, its execution_timeout_s)."""
    if isinstance(workflow_type, str):
        return workflow_type, None
    definition = sdk.definition_of(workflow_type)
    if isinstance(definition, sdk.WorkflowDefinition):
        return definition.name, definition.execution_timeout_s
    is_task = isinstance(definition, sdk.TaskDefinition)
    what = "a @coda.task function" if is_task else repr(workflow_type)
    raise InvalidArgument("workflow_type must be a workflow type name or a @coda.workflow "
                          f"function, got {what}", field="workflow_type")


def _uint32(value, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT32_MAX:
        raise InvalidArgument(f"{field} must be an integer from 0 to {UINT32_MAX}, got "
                              f"{value!r}", field=field)
    return value


def _reason(reason) -> str:
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason must be a string, got {type(reason).__name__}",
                              field="reason")
    return reason


def _wait_deadline_s(timeout: float | None) -> float | None:
    """A caller's wait in seconds (None: no limit) -> a time.monotonic() deadline."""
    if timeout is None:
        return None
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or math.isnan(timeout) or timeout < 0):
        raise InvalidArgument(f"timeout must be a number of seconds >= 0 or None, got "
                              f"{timeout!r}", field="timeout")
    return time.monotonic() + timeout


def _poll_wait_ms(deadline_s: float | None) -> int:
    if deadline_s is None:
        return WAIT_POLL_MS
    left_s = deadline_s - time.monotonic()
    return int(min(WAIT_POLL_MS, max(0.0, left_s * 1000)))


def _decode_event(raw: bytes) -> dict:
    event = codec.decode_payload(raw, what="history event")
    if not isinstance(event, dict) or not isinstance(event.get("event_id"), int):
        raise errors.Internal(f"a history event from the server is not a map with an "
                              f"event_id: {event!r:.200}")
    return event


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

    async def wait_closed(self, timeout: float | None = None, *,
                          follow_runs: bool = True) -> dict:
        """Wait until the run closes (seconds; None: no limit) and describe it, whatever
        its status. A run that continued as new is followed to the run after it (unless
        `follow_runs=False`), so this is the workflow's end. WaitTimeout if it still runs
        when `timeout` passes."""
        deadline_s = _wait_deadline_s(timeout)
        run_id = self.run_id
        while True:
            polled_s = time.monotonic()
            try:
                info = await self.client.wait_workflow(self.workflow_id, run_id,
                                                       _poll_wait_ms(deadline_s))
            except errors.NotFound:
                run_id = await self._newest_of_chain(run_id, follow_runs)
                continue
            if (follow_runs and info["status"] == model.CONTINUED_AS_NEW
                    and info["continued_as_run_id"]):
                run_id = info["continued_as_run_id"]
                continue
            if info["status"] != model.RUNNING:
                return info
            now_s = time.monotonic()
            if deadline_s is not None and now_s >= deadline_s:
                raise WaitTimeout(
                    f"workflow {self.workflow_id} run {info['run_id']} still RUNNING after "
                    f"waiting {timeout} s", workflow_id=self.workflow_id,
                    run_id=info["run_id"], timeout_s=timeout)
            pause_s = polled_s + WAIT_POLL_INTERVAL_MIN_S - now_s
            if deadline_s is not None:
                pause_s = min(pause_s, deadline_s - now_s)
            if pause_s > 0:
                await asyncio.sleep(pause_s)

    async def _newest_of_chain(self, run_id: str, follow_runs: bool) -> str:
        """A run we wait for is gone: Flow keeps only the last closed runs of an id
        (limits.closed_runs_per_workflow_max). If the current run continued from others,
        the chain moved past ours: wait for the current run instead."""
        current = await self.client.describe_workflow(self.workflow_id)
        if not (follow_runs and run_id and current["continued_from_run_id"]):
            raise errors.NotFound(f"workflow {self.workflow_id} has no run {run_id} any more "
                                  "(closed runs are kept for a while, then deleted)",
                                  workflow_id=self.workflow_id, run_id=run_id)
        return current["run_id"]

    async def result(self, timeout: float | None = None):
        """The run's result once it completes (see wait_closed); raises the
        coda.errors.WorkflowError of any other closing status."""
        return workflow_result(await self.wait_closed(timeout))

    async def cancel(self, reason: str = "") -> str:
        """Ask the run to cancel (it sees CancelledError and may clean up); its run id."""
        return await self.client.cancel_workflow(self.workflow_id, self.run_id, reason=reason)

    async def terminate(self, reason: str = "") -> str:
        """Close the run TERMINATED at once, running no workflow code; its run id."""
        return await self.client.terminate_workflow(self.workflow_id, self.run_id,
                                                    reason=reason)

    async def history(self) -> list[dict]:
        return await self.client.workflow_history(self.workflow_id, self.run_id)

    async def signal(self, name: str, payload=None, *, request_id: str | None = None) -> str:
        """Send a signal to this run (the workflow takes it with coda.context.wait_signal);
        delivered once, also when the call is retried. Its run id."""
        return await self.client.signal_workflow(self.workflow_id, name, payload,
                                                 run_id=self.run_id, request_id=request_id)

    async def get_state(self, key: str, default=MISSING):
        """The run's state value under `key` (coda.context.set_state), as of the last
        committed workflow task: linearizable. NotFound if unset, unless `default`."""
        return await self.client.get_workflow_state(self.workflow_id, key, run_id=self.run_id,
                                                    default=default)


class Client(ScheduleMethods):
    def __init__(self, address, *, timeout_s: float = 30.0,
                 payload_bytes_max: int = limits.payload_bytes_default,
                 allow_undeclared_types: bool = False):
        self.addresses = parse_addresses(address)
        # The default of start_workflow's allow_undeclared_type.
        self.allow_undeclared_types = allow_undeclared_types
        self.timeout_s = timeout_s
        self.payload_bytes_max = payload_bytes_max
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.FlowStub] = {}
        self._preferred = random.randrange(len(self.addresses))
        # Shard map (shard -> leader's client address), fetched lazily: requests about one
        # workflow go straight to its shard's leader, saving the server a forward hop.
        # Only a hint: any node still accepts any request.
        self._shard_leaders: list[str | None] | None = None
        self._shard_map_due_s = 0.0
        self.broadcast = Broadcasts(self)
        self._watch_opens = 0  # rotates the node asked first for a watch's shard map

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    def _stub(self, address: str) -> pb_grpc.FlowStub:
        # One stub per channel: making one builds a callable per RPC method (~13 us).
        stub = self._stubs.get(address)
        if stub is not None:
            return stub
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_send_message_length", limits.grpc_message_bytes_max),
                ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
                # A long stream (WatchBroadcasts) to a node that vanished without a reset
                # (a partition, a paused process) must fail, not hang: nodes accept a
                # ping every 5 s on an idle stream (flow.node.server_options).
                ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.enable_retries", 0)])
        stub = self._stubs[address] = pb_grpc.FlowStub(self._channels[address])
        return stub

    async def _call(self, method: str, request, *, retry_indeterminate: bool,
                    workflow_id: str | None = None, wait_s: float = 0.0):
        """`wait_s`: how long the server may hold the call (a long poll) on top of the
        usual time per attempt and the client's retry budget."""
        deadline = time.monotonic() + self.timeout_s + wait_s
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
                    request, timeout=max(0.1, min(CALL_TIMEOUT_S + wait_s, remaining)))
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

    async def start_workflow(self, workflow_type, args=None, *, workflow_id: str | None = None,
                             reuse_policy: str = model.ALLOW_DUPLICATE,
                             request_id: str | None = None,
                             execution_timeout: float | None = None,
                             allow_undeclared_type: bool | None = None) -> WorkflowHandle:
        """Start a run of `workflow_type` (a type name or a @coda.workflow function) with
        keyword arguments `args`. `execution_timeout` (seconds; default: the decorator's
        when given a function, else none): past it the run closes TIMED_OUT.
        A type no supervisor has declared is refused (NotFound) unless
        `allow_undeclared_type` (default: the client's `allow_undeclared_types`): then
        it waits in its queue for one."""
        handle, _ = await self._start_workflow(
            workflow_type, args, workflow_id=workflow_id, reuse_policy=reuse_policy,
            request_id=request_id, execution_timeout=execution_timeout,
            allow_undeclared_type=allow_undeclared_type, wait_ms=0)
        return handle

    async def execute_workflow(self, workflow_type, args=None, *, timeout: float | None = None,
                               **start_options):
        """Start a run and return its result (what `start_workflow(...).result(timeout)`
        returns, raising what it raises), in one call to Flow when the run closes within
        the first long poll: the start's answer waits for the close. Options as
        start_workflow's."""
        deadline_s = _wait_deadline_s(timeout)
        handle, closed = await self._start_workflow(workflow_type, args,
                                                    wait_ms=_poll_wait_ms(deadline_s),
                                                    **start_options)
        if closed is not None and not (closed["status"] == model.CONTINUED_AS_NEW
                                       and closed["continued_as_run_id"]):
            return workflow_result(closed)
        left_s = None if deadline_s is None else max(0.0, deadline_s - time.monotonic())
        return await handle.result(timeout=left_s)

    async def _start_workflow(self, workflow_type, args, *, workflow_id: str | None = None,
                              reuse_policy: str = model.ALLOW_DUPLICATE,
                              request_id: str | None = None,
                              execution_timeout: float | None = None,
                              allow_undeclared_type: bool | None = None,
                              wait_ms: int) -> tuple[WorkflowHandle, dict | None]:
        """The handle, and the run as it closed if it did within wait_ms (else None)."""
        if allow_undeclared_type is None:
            allow_undeclared_type = self.allow_undeclared_types
        type_name, default_timeout_s = workflow_type_of(workflow_type)
        if reuse_policy not in REUSE_ENUM:
            raise InvalidArgument(f"unknown reuse_policy {reuse_policy!r}; one of "
                                  f"{', '.join(model.REUSE_POLICIES)}", field="reuse_policy")
        timeout_ms = execution_timeout_ms(
            execution_timeout if execution_timeout is not None else default_timeout_s)
        payload = codec.encode_payload(workflow_args(args), what="workflow args",
                                       limit_bytes=self.payload_bytes_max)
        request = pb.StartWorkflowRequest(
            workflow_id=workflow_id or f"{type_name}-{uuid.uuid4().hex}",
            workflow_type=type_name, input=payload, reuse_policy=REUSE_ENUM[reuse_policy],
            request_id=request_id or uuid.uuid4().hex, execution_timeout_ms=timeout_ms,
            allow_undeclared_type=allow_undeclared_type, wait_ms=_uint32(wait_ms, "wait_ms"))
        answer = await self._call("StartWorkflow", request, retry_indeterminate=True,
                                  workflow_id=request.workflow_id, wait_s=wait_ms / 1000)
        handle = WorkflowHandle(self, request.workflow_id, answer.run_id, answer.started)
        closed = workflow_to_dict(answer.closed) if answer.HasField("closed") else None
        return handle, closed

    def get_workflow_handle(self, workflow_id: str, run_id: str = "") -> WorkflowHandle:
        return WorkflowHandle(self, workflow_id, run_id)

    async def describe_workflow(self, workflow_id: str, run_id: str | None = None) -> dict:
        answer = await self._call("DescribeWorkflow", pb.DescribeWorkflowRequest(
            workflow_id=workflow_id, run_id=run_id or ""), retry_indeterminate=True,
            workflow_id=workflow_id)
        return dict(workflow_to_dict(answer.workflow),
                    pending_tasks=[pending_task_to_dict(t) for t in answer.pending_tasks],
                    pending_timers=[{"key": t.key, "fire_time_ms": t.fire_time_ms}
                                    for t in answer.pending_timers],
                    pending_truncated=answer.pending_truncated)

    async def wait_workflow(self, workflow_id: str, run_id: str | None = None,
                            wait_ms: int = WAIT_POLL_MS) -> dict:
        """One long poll: the run's description once it is closed, or as it is after
        `wait_ms` (the server may cap the wait). WorkflowHandle.result repeats it."""
        wait_ms = _uint32(wait_ms, "wait_ms")
        answer = await self._call("WaitWorkflow", pb.WaitWorkflowRequest(
            workflow_id=workflow_id, run_id=run_id or "", wait_ms=wait_ms),
            retry_indeterminate=True, workflow_id=workflow_id, wait_s=wait_ms / 1000)
        return workflow_to_dict(answer.workflow)

    async def cancel_workflow(self, workflow_id: str, run_id: str | None = None, *,
                              reason: str = "", request_id: str | None = None) -> str:
        """Request cancellation of the run (default: the current one); its run id."""
        return await self._close_request("CancelWorkflow", pb.CancelWorkflowRequest,
                                         workflow_id, run_id, reason, request_id)

    async def terminate_workflow(self, workflow_id: str, run_id: str | None = None, *,
                                 reason: str = "", request_id: str | None = None) -> str:
        """Close the run (default: the current one) TERMINATED at once; its run id."""
        return await self._close_request("TerminateWorkflow", pb.TerminateWorkflowRequest,
                                         workflow_id, run_id, reason, request_id)

    async def _close_request(self, method: str, message, workflow_id: str, run_id, reason,
                             request_id) -> str:
        answer = await self._call(method, message(
            workflow_id=workflow_id, run_id=run_id or "", reason=_reason(reason),
            request_id=request_id or uuid.uuid4().hex), retry_indeterminate=True,
            workflow_id=workflow_id)
        return answer.run_id

    async def signal_workflow(self, workflow_id: str, name: str, payload=None, *,
                              run_id: str | None = None, request_id: str | None = None) -> str:
        """Signal the run (default: the current one); answers its run id. NotFound if
        the workflow is unknown or that run is not running."""
        validate.workflow_id(workflow_id)
        name = validate.identifier(name, "signal name", limits.signal_name_bytes_max)
        data = codec.encode_payload(payload, what=f"payload of signal {name!r}",
                                    limit_bytes=self.payload_bytes_max)
        answer = await self._call("SignalWorkflow", pb.SignalWorkflowRequest(
            workflow_id=workflow_id, run_id=run_id or "", name=name, payload=data,
            request_id=request_id or uuid.uuid4().hex), retry_indeterminate=True,
            workflow_id=workflow_id)
        return answer.run_id

    async def get_workflow_state(self, workflow_id: str, key: str, *,
                                 run_id: str | None = None, default=MISSING):
        validate.workflow_id(workflow_id)
        key = validate.identifier(key, "state key", limits.state_key_bytes_max)
        try:
            answer = await self._call("GetWorkflowState", pb.GetWorkflowStateRequest(
                workflow_id=workflow_id, run_id=run_id or "", key=key),
                retry_indeterminate=True, workflow_id=workflow_id)
        except errors.NotFound as exc:
            if default is MISSING or "key" not in exc.details:
                raise  # an unknown workflow or run is an error even with a default
            return default
        return codec.decode_payload(answer.value, what=f"state {key!r} of {workflow_id!r}")

    async def open_broadcast_watch(self, shard: int, known: dict[str, int]):
        """A WatchBroadcasts stream on the shard's leader (supervisors' caches use it). The
        caller iterates it and reopens on any error: each open asks the nodes in turn for
        the shard map, so a dead node or a moved leader costs one failed open."""
        self._watch_opens += 1
        leader = await self._leader_for_shard(shard, start=self._watch_opens)
        address = leader or self.addresses[self._watch_opens % len(self.addresses)]
        return self._stub(address).WatchBroadcasts(pb.WatchBroadcastsRequest(
            shard=shard, known=[pb.BroadcastKnown(name=n, version=v) for n, v in known.items()]))

    async def _leader_for_shard(self, shard: int, start: int = 0) -> str | None:
        for step in range(len(self.addresses)):
            address = self.addresses[(start + step) % len(self.addresses)]
            try:
                answer = await self._stub(address).GetShardMap(
                    pb.GetShardMapRequest(), timeout=SHARD_MAP_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                continue
            leaders = [l or None for l in answer.leaders]
            self._shard_leaders = leaders or None
            self._shard_map_due_s = time.monotonic() + SHARD_MAP_TTL_S
            if shard < len(leaders) and leaders[shard]:
                return leaders[shard]
        return None

    async def workflow_history(self, workflow_id: str, run_id: str | None = None, *,
                               page_size: int = 0) -> list[dict]:
        """Every event of the run (default: the current one), in order: msgpack maps
        decoded, their payload fields (input, result, args, ...) left as msgpack bytes."""
        page_size = _uint32(page_size, "page_size")
        events: list[dict] = []
        run_id, after_event_id = run_id or "", 0
        while True:
            answer = await self._call("GetWorkflowHistory", pb.GetWorkflowHistoryRequest(
                workflow_id=workflow_id, run_id=run_id, after_event_id=after_event_id,
                page_size=page_size), retry_indeterminate=True, workflow_id=workflow_id)
            page = [_decode_event(raw) for raw in answer.events]
            events += page
            if not (answer.more and page):
                return events
            # Later pages of the same run, even if another run became current meanwhile.
            run_id, after_event_id = answer.run_id, page[-1]["event_id"]

    async def list_workflows(self, *, statuses=(), workflow_types=(), page_size: int = 0,
                             page_token: bytes = b"", build_ids=(), workflow_id_prefix: str = "",
                             start_time_from_ms: int = 0, start_time_to_ms: int = 0,
                             close_time_from_ms: int = 0, close_time_to_ms: int = 0,
                             order_by: str = "") -> tuple[list[dict], bytes]:
        """One page of workflows (current runs) matching every filter given.

        `build_ids`: runs pinned to one of these builds (which runs still need an old
        build). Times are [from, to) in ms since the epoch, 0 = unbounded; a close-time
        bound lists closed runs only. `order_by`: "workflow_id" (default), "start_time"
        or "close_time", "-" first for descending. Pass back the returned token (empty:
        the end) with the same filters for the next page."""
        answer = await self._call("ListWorkflows", pb.ListWorkflowsRequest(
            statuses=list(statuses), workflow_types=list(workflow_types), page_size=page_size,
            page_token=page_token, build_ids=list(build_ids),
            workflow_id_prefix=workflow_id_prefix, start_time_from_ms=start_time_from_ms,
            start_time_to_ms=start_time_to_ms, close_time_from_ms=close_time_from_ms,
            close_time_to_ms=close_time_to_ms, order_by=order_by), retry_indeterminate=True)
        return [workflow_to_dict(w) for w in answer.workflows], bytes(answer.next_page_token)

    async def list_supervisors(self) -> dict:
        """Supervisors with a live lease: {"supervisors": [...], "unanswered_shards": [...]}."""
        answer = await self._call("ListSupervisors", pb.ListSupervisorsRequest(),
                                  retry_indeterminate=True)
        return {"supervisors": [{
            "supervisor_id": s.supervisor_id, "build_id": s.build_id or None,
            "workflow_types": list(s.workflow_types), "task_types": list(s.task_types),
            "registered_time_ms": s.registered_time_ms, "shards": list(s.shards)}
            for s in answer.supervisors], "unanswered_shards": list(answer.unanswered_shards)}

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


class SyncWorkflowHandle:
    """WorkflowHandle's methods, blocking (on the SyncClient's loop)."""

    def __init__(self, client: "SyncClient", handle: WorkflowHandle):
        self.client = client
        self._handle = handle

    @property
    def workflow_id(self) -> str:
        return self._handle.workflow_id

    @property
    def run_id(self) -> str:
        return self._handle.run_id

    @property
    def started(self) -> bool:
        return self._handle.started

    def __repr__(self) -> str:
        return (f"SyncWorkflowHandle(workflow_id={self.workflow_id!r}, run_id={self.run_id!r}, "
                f"started={self.started!r})")

    def describe(self) -> dict:
        return self.client._run(self._handle.describe())

    def wait_closed(self, timeout: float | None = None, **kwargs) -> dict:
        return self.client._run(self._handle.wait_closed(timeout, **kwargs))

    def result(self, timeout: float | None = None):
        return self.client._run(self._handle.result(timeout))

    def cancel(self, reason: str = "") -> str:
        return self.client._run(self._handle.cancel(reason))

    def terminate(self, reason: str = "") -> str:
        return self.client._run(self._handle.terminate(reason))

    def history(self) -> list[dict]:
        return self.client._run(self._handle.history())

    def signal(self, name: str, payload=None, **kwargs) -> str:
        return self.client._run(self._handle.signal(name, payload, **kwargs))

    def get_state(self, key: str, default=MISSING):
        return self.client._run(self._handle.get_state(key, default))


class SyncClient(SyncScheduleMethods):
    """The same API, blocking: one private event loop per client."""

    def __init__(self, address, **kwargs):
        self._client = Client(address, **kwargs)  # first: a bad address leaks no event loop
        self._loop = asyncio.new_event_loop()
        self.broadcast = SyncBroadcasts(self, self._client.broadcast)

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

    def execute_workflow(self, *args, **kwargs):
        return self._run(self._client.execute_workflow(*args, **kwargs))

    def start_workflow(self, *args, **kwargs) -> SyncWorkflowHandle:
        return SyncWorkflowHandle(self, self._run(self._client.start_workflow(*args, **kwargs)))

    def get_workflow_handle(self, workflow_id: str, run_id: str = "") -> SyncWorkflowHandle:
        return SyncWorkflowHandle(self, self._client.get_workflow_handle(workflow_id, run_id))

    def describe_workflow(self, *args, **kwargs) -> dict:
        return self._run(self._client.describe_workflow(*args, **kwargs))

    def wait_workflow(self, *args, **kwargs) -> dict:
        return self._run(self._client.wait_workflow(*args, **kwargs))

    def cancel_workflow(self, *args, **kwargs) -> str:
        return self._run(self._client.cancel_workflow(*args, **kwargs))

    def terminate_workflow(self, *args, **kwargs) -> str:
        return self._run(self._client.terminate_workflow(*args, **kwargs))

    def workflow_history(self, *args, **kwargs) -> list[dict]:
        return self._run(self._client.workflow_history(*args, **kwargs))

    def signal_workflow(self, *args, **kwargs) -> str:
        return self._run(self._client.signal_workflow(*args, **kwargs))

    def get_workflow_state(self, *args, **kwargs):
        return self._run(self._client.get_workflow_state(*args, **kwargs))

    def list_workflows(self, **kwargs):
        return self._run(self._client.list_workflows(**kwargs))

    def list_all(self, **filters) -> list[dict]:
        """Every matching workflow, following page tokens to the end."""
        async def collect():
            return [w async for w in self._client.iter_workflows(**filters)]
        return self._run(collect())

    def cluster_status(self) -> dict:
        return self._run(self._client.cluster_status())

    def list_supervisors(self) -> dict:
        return self._run(self._client.list_supervisors())

    def shard_map(self) -> dict:
        return self._run(self._client.shard_map())


__all__ = ["Client", "SyncClient", "SyncWorkflowHandle", "WorkflowHandle", "CodaError",
           "workflow_result", "ScheduleHandle", "SyncScheduleHandle"]
