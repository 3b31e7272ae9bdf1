"""gRPC `SupervisorSessions.Session`: one stream per (supervisor, shard), with the leader.

The first message is the hello. A node that does not lead the shard answers
`not_leader_hint` and ends the stream. Otherwise the hello is committed
(`register_supervisor`: declared types, and what the supervisor still runs, so lost
dispatches are re-queued), the session joins the shard's dispatcher, and the stream
carries credit, heartbeats and completions one way, dispatches, acks and cancels the other.
Each completion is its own command (its own atomic apply and dedup by request id), all of
one message proposed together so Raft batches them. A completion carries the credit the
leader set aside for it (`eager`): what it queues for its own supervisor is assigned in
the same command and dispatched on commit, with no `assign` in between.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda.errors import CodaError, InvalidArgument, NotLeader
from coda.flow import commands, limits, metrics, retry, validate
from coda.flow.config import NodeConfig
from coda.flow.dispatcher import ShardDispatcher, now_ms
from coda.flow.sm_supervisors import queues_of
from coda.storage import codec

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0


class SessionService(pb_grpc.SupervisorSessionsServicer):
    def __init__(self, cfg: NodeConfig, dispatchers: list[ShardDispatcher]):
        self.cfg = cfg
        self.dispatchers = dispatchers

    async def Session(self, request_iterator, context):
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            return
        hello = first.hello if first.WhichOneof("body") == "hello" else None
        try:
            dispatcher = self._dispatcher_for(hello)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            return
        replica = dispatcher.replica
        if not dispatcher.active:
            yield pb.FlowMessage(not_leader_hint=replica.leader_hint() or "")
            return
        try:
            await replica.propose(commands.register_supervisor(
                time_ms=now_ms(), supervisor_id=hello.supervisor_id, build_id=hello.build_id,
                workflow_types=list(hello.workflow_types), task_types=list(hello.task_types),
                running=[[r.workflow_id, r.run_id, r.task_key, r.attempt] for r in hello.running],
                upgradable_workflow_types=list(hello.upgradable_workflow_types)))
        except CodaError as exc:
            log.info("shard %d: hello of %s not committed: %s", replica.shard,
                     hello.supervisor_id, exc)
            yield pb.FlowMessage(not_leader_hint=replica.leader_hint() or "")
            return
        session = dispatcher.attach(hello.supervisor_id,
                                    queues_of(hello.workflow_types, hello.task_types,
                                              hello.build_id),
                                    min(hello.slots, limits.session_credit_max))
        metrics.supervisor_sessions.labels(str(replica.shard)).inc()
        log.info("shard %d: supervisor %s connected (%d slots)", replica.shard,
                 hello.supervisor_id, hello.slots)
        yield pb.FlowMessage(accepted=pb.SessionAccepted(
            lease_ms=int(dispatcher.lease_s * 1000), payload_bytes_max=self.cfg.payload_bytes_max))
        reader = asyncio.create_task(self._read(request_iterator, dispatcher, session))
        try:
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            dispatcher.detach(session)
            metrics.supervisor_sessions.labels(str(replica.shard)).dec()
            log.info("shard %d: supervisor %s session ended", replica.shard,
                     hello.supervisor_id)

    def _dispatcher_for(self, hello) -> ShardDispatcher:
        if hello is None:
            raise InvalidArgument("a session starts with a hello", field="hello")
        validate.identifier(hello.supervisor_id, "supervisor_id", limits.supervisor_id_bytes_max)
        if hello.shard >= len(self.dispatchers):
            raise InvalidArgument(f"shard {hello.shard} does not exist (the cluster has "
                                  f"{len(self.dispatchers)})", field="shard")
        return self.dispatchers[hello.shard]

    async def _read(self, request_iterator, dispatcher: ShardDispatcher, session) -> None:
        pending: set[asyncio.Task] = set()
        try:
            async for message in request_iterator:
                dispatcher.heard(session.supervisor_id)
                kind = message.WhichOneof("body")
                if kind == "credit":
                    dispatcher.add_credit(session, message.credit.slots)
                elif kind == "heartbeat" and message.heartbeat.tasks:
                    if len(pending) >= limits.session_pending_batches_max:
                        continue  # only progress reports: the next heartbeat carries them
                    task = asyncio.create_task(_task_heartbeats(dispatcher, message.heartbeat))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                elif kind == "completions":
                    # The credit these completions freed rides with them: set aside what
                    # their eager dispatch may use first, now, before the dispatch loop
                    # (kicked below) gives it to queued work.
                    batch = list(message.completions.completions)[
                        :limits.completions_per_message_max]
                    dispatcher.add_credit(session, message.completions.slots, kick=False)
                    reserved = [dispatcher.reserve_eager(session, eager_wanted(c))
                                for c in batch]
                    dispatcher.kick()
                    task = asyncio.create_task(
                        _complete(dispatcher, session, batch, reserved,
                                  self.cfg.payload_bytes_max, self.cfg.history_limit()))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: the session ends
            log.info("shard %d: session of %s read failed: %s", dispatcher.shard,
                     session.supervisor_id, exc)
        finally:
            session.end(None)


def eager_wanted(completion) -> int:
    """How much of what a completion queues its supervisor could take at once: the
    workflow task a task's result wakes; the tasks (at most one per command) a workflow
    task's commands spawn, and the workflow task more events may need."""
    if completion.WhichOneof("outcome") == "workflow_commands":
        return min(limits.eager_items_per_completion_max,
                   1 + codec.array_length(bytes(completion.workflow_commands)))
    if completion.HasField("then_workflow_task") and completion.WhichOneof("outcome") == "result":
        return min(limits.eager_items_per_completion_max, 1 + codec.array_length(
            bytes(completion.then_workflow_task.workflow_commands)))
    return 1


async def _complete(dispatcher: ShardDispatcher, session, batch: list, reserved: list[int],
                    payload_bytes_max: int, history_limit: dict) -> None:
    """Commit each completion; ack what committed, reject what was stale or malformed.
    A completion whose outcome is unknown gets neither: the supervisor resends it.
    `reserved`: the credit set aside for each one's eager dispatch."""
    replica = dispatcher.replica
    label = str(replica.shard)
    metrics.child(metrics.completion_batch_items, label).observe(len(batch))

    async def one(completion, eager_items: int):
        eager = ({"supervisor_id": session.supervisor_id, "items": eager_items}
                 if eager_items else None)
        try:
            return await _complete_one(replica, completion, payload_bytes_max,
                                       history_limit, eager, session.supervisor_id)
        finally:
            dispatcher.settle_eager(session, completion.request_id, eager_items)

    results = await asyncio.gather(*(one(c, n) for c, n in zip(batch, reserved)))
    acks = pb.CompletionAcks()
    for completion, (outcome, reason) in zip(batch, results):
        metrics.child(metrics.completions, label, outcome).inc()
        if outcome == "accepted":
            acks.request_ids.append(completion.request_id)
            if completion.WhichOneof("outcome") == "failure":
                metrics.reported_failures.labels(
                    label, "task" if completion.task_key else "workflow_task").inc()
        elif outcome == "rejected":
            acks.rejected.append(pb.Rejection(request_id=completion.request_id, reason=reason))
        elif isinstance(reason, NotLeader):
            session.end(replica.leader_hint())
            return
    if acks.request_ids or acks.rejected:
        session.send(pb.FlowMessage(acks=acks))


async def _complete_one(replica, completion, payload_bytes_max: int,
                        history_limit: dict, eager: dict | None = None,
                        session_supervisor: str = "") -> tuple[str, object]:
    try:
        validate.request_id(completion.request_id)
        kind = completion.WhichOneof("outcome")
        if kind == "result":
            outcome = {"result": bytes(completion.result)}
            if completion.HasField("then_workflow_task"):
                outcome.update(_chained_outcome(completion.then_workflow_task,
                                                session_supervisor, payload_bytes_max,
                                                history_limit))
        elif kind == "failure":
            f = completion.failure
            outcome = {"failure": {"type": f.error_type, "message": f.message, "stack": f.stack,
                                   "non_retryable": f.non_retryable}}
        elif kind == "workflow_commands":
            # The cluster's history limits ride along: the shard checks them on the
            # workflow task's commands (flow.sm_common.history_limits).
            outcome = {"commands": bound_payloads(
                codec.decode_payload(bytes(completion.workflow_commands),
                                     what="workflow commands"), payload_bytes_max),
                       "history_limit": history_limit}
        else:
            raise InvalidArgument("a completion needs a result, a failure or commands",
                                  field="outcome")
        try:
            ok = await _propose_completion(replica, completion, outcome, eager=eager)
        except CodaError as exc:
            if "then_workflow_task" not in outcome or not _refused(exc):
                raise
            # The chained workflow task's commands were refused (a limit, a malformed
            # command): never the result with them. The result goes alone; the workflow
            # task is then dispatched as usual and meets the same refusal there. Same
            # request id: a refused command left no trace (its writes, its dedup entry
            # and its eager assignments rolled back), and a resend must dedup to this.
            log.info("shard %d: chained workflow task of %s refused (%s): result alone",
                     replica.shard, completion.workflow_id, exc.message)
            del outcome["then_workflow_task"], outcome["history_limit"]
            metrics.child(metrics.chained_workflow_tasks, str(replica.shard), "refused").inc()
            ok = await _propose_completion(replica, completion, outcome, eager=eager)
        if "chained" in ok:
            metrics.child(metrics.chained_workflow_tasks, str(replica.shard),
                          "accepted" if ok["chained"] == "accepted" else "refused").inc()
    except CodaError as exc:
        refused = _refused(exc)
        if refused and completion.WhichOneof("outcome") == "workflow_commands":
            # Commands the shard refuses (over a limit, malformed) would leave the
            # workflow task running for ever: it fails instead, retried with backoff and
            # shown in describe, like any workflow task failure.
            return await _fail_refused_workflow_task(replica, completion, exc)
        # A malformed or refused completion is final; an unknown outcome is resent.
        if refused:
            return "rejected", f"{exc.code}: {exc.message}"
        return "error", exc
    return _answer(ok)


def _refused(exc: CodaError) -> bool:
    """A final no from the shard (malformed, over a limit), not an unknown outcome."""
    return isinstance(exc, InvalidArgument) or (exc.definite and not exc.retryable)


def _chained_outcome(chained, supervisor_id: str, payload_bytes_max: int,
                     history_limit: dict) -> dict:
    """The body fields of a task result's chained workflow task (sm_supervisors
    .chained_wft_refusal decides whether it commits)."""
    try:
        workflow_commands = codec.decode_payload(bytes(chained.workflow_commands),
                                                 what="chained workflow commands")
    except CodaError as exc:  # the result still counts; its workflow task runs as usual
        log.info("chained workflow task dropped: %s", exc.message)
        return {}
    return {"then_workflow_task": {
                "seen_event_id": chained.seen_event_id,
                "completed_time_ms": chained.completed_time_ms,
                "workflow_attempt": chained.workflow_attempt,
                "supervisor_id": supervisor_id,
                "commands": bound_payloads(workflow_commands, payload_bytes_max)},
            "history_limit": history_limit}


def _answer(ok: dict) -> tuple[str, object]:
    return ("rejected", ok["rejected"]) if "rejected" in ok else ("accepted", None)


async def _propose_completion(replica, completion, outcome: dict, suffix: str = "",
                              eager: dict | None = None) -> dict:
    return await replica.propose(commands.complete(
        time_ms=now_ms(), request_id=completion.request_id + suffix,
        workflow_id=completion.workflow_id, run_id=completion.run_id,
        key=completion.task_key, attempt=completion.attempt, outcome=outcome, eager=eager))


async def _fail_refused_workflow_task(replica, completion, exc: CodaError):
    failure = {"type": type(exc).__name__, "non_retryable": False,
               "message": f"Flow refused this workflow task's commands: {exc.message}"[:8192]}
    try:
        ok = await _propose_completion(replica, completion, {"failure": failure}, "/refused")
    except CodaError as second:
        if second.definite and not second.retryable:
            return "rejected", f"{second.code}: {second.message}"
        return "error", second
    return _answer(ok)


PAYLOAD_FIELDS = {"ScheduleTask": ("args", "args of task {task!r}"),
                  "StartChildWorkflow": ("args", "args of child workflow {workflow_id!r}"),
                  "CompleteWorkflow": ("result", "the workflow result"),
                  "SetState": ("value", "the value of state {key!r}"),
                  "SignalExternal": ("payload", "the payload of signal {name!r}"),
                  "ContinueAsNew": ("args", "the continue-as-new args")}


def bound_payloads(workflow_commands, payload_bytes_max: int):
    """Hold a workflow task's payloads to this cluster's limit (workers check only their
    own default): the first command over it, and all after, become a final FailWorkflow,
    as the worker does for what it can't send. Each attempt would replay to the same call."""
    if not isinstance(workflow_commands, list):
        return workflow_commands  # the state machine answers it as malformed
    for n, command in enumerate(workflow_commands):
        spec = PAYLOAD_FIELDS.get(command.get("type")) if isinstance(command, dict) else None
        if spec is None:
            continue
        field, what = spec
        size = len(command.get(field) or b"")
        if size > payload_bytes_max:
            name = what.format(task=command.get("task"), workflow_id=command.get("workflow_id"),
                               key=command.get("key"), name=command.get("name"))
            return workflow_commands[:n] + [{"type": "FailWorkflow", "error": {
                "type": "PayloadError", "message": f"{name} is {size} bytes encoded, over the "
                f"limit of {payload_bytes_max} bytes"}, "retry": retry.NO_RETRY}]
    return workflow_commands


async def _task_heartbeats(dispatcher: ShardDispatcher, heartbeat) -> None:
    metrics.task_heartbeats.labels(str(dispatcher.shard)).inc(len(heartbeat.tasks))
    for beat in heartbeat.tasks:
        try:
            await dispatcher.replica.propose(commands.task_heartbeat(
                time_ms=now_ms(), workflow_id=beat.workflow_id, run_id=beat.run_id,
                key=beat.task_key, attempt=beat.attempt, details=bytes(beat.details) or None))
        except CodaError as exc:
            log.debug("shard %d: task heartbeat not committed: %s", dispatcher.shard, exc)

