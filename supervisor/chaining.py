"""Chained workflow tasks: a task's result and the workflow task it wakes, sent as one.

A sequential workflow step costs, without this: the task's completion commits, Flow
queues the workflow task and dispatches it here, a worker runs it, its completion commits.
When the supervisor already holds the run's whole history (it ran the run's last
workflow task, and the task's dispatch brought the events since:
flow.dispatcher._with_run_history), it runs that workflow task itself as soon as the
task's result is in, on that history plus the TaskCompleted event Flow will record (its
id and this supervisor's time), and sends the result with the workflow task's commands
(Completion.then_workflow_task). The shard commits both in one command if nothing else
reached the history meanwhile (flow.sm_supervisors.chained_wft_refusal); if something
did, it commits the result alone and the workflow task goes the usual way. Either way the
outcome is the one the unchained path gives; a step saves a commit, a dispatch and a
round trip to Flow when it chains.

The worker that runs it keeps the run live only as long as the events it ran on are the
ones Flow recorded (supervisor.worker.event_fingerprint): a refused chain replays.

Pure bookkeeping: the Supervisor submits the message and completes the item.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from coda.api import flow_pb2 as pb
from coda.supervisor.history_cache import HistoryCache

# How long a task's result may wait for its chained workflow task; past it, the result
# goes alone (a slow workflow step must not hold a finished task's result back).
CHAIN_WAIT_S = 0.5
# A task this close to its start-to-close deadline sends its result alone, at once: held,
# it could reach Flow after the attempt timed out, and be run again.
DEADLINE_MARGIN_S = 1.0 + CHAIN_WAIT_S
RUNS_MAX = 10_000   # runs whose workflow-task facts are remembered (least recent go first)


@dataclass
class PendingChain:
    item_id: str                 # the task's local id (still held: its slot, its ref)
    completion: pb.Completion    # the task's result, waiting to be sent
    seen_event_id: int           # the TaskCompleted event's id the workflow task ran on
    completed_time_ms: int
    workflow_attempt: int
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class RunFacts:
    """What a workflow task's worker message needs beyond the history (from the run's
    last workflow task dispatch)."""
    workflow_type: str
    workflow_attempt: int
    start_time_ms: int


class Chains:
    def __init__(self, histories: HistoryCache, *, runs_max: int = RUNS_MAX):
        self.histories = histories
        self.runs_max = runs_max
        self._runs: OrderedDict[tuple[str, str], RunFacts] = OrderedDict()
        self.pending: dict[str, PendingChain] = {}   # the chained workflow task's local id ->

    def note_workflow_task(self, dispatch: pb.Dispatch) -> None:
        run = (dispatch.workflow_id, dispatch.run_id)
        self._runs.pop(run, None)
        self._runs[run] = RunFacts(dispatch.type_name, dispatch.workflow_attempt,
                                   dispatch.start_time_ms)
        while len(self._runs) > self.runs_max:
            self._runs.popitem(last=False)

    def note_task(self, dispatch: pb.Dispatch, tail: list) -> None:
        """A task dispatch that carries its run's news: the cached history grows by it."""
        run = (dispatch.workflow_id, dispatch.run_id)
        history = self.histories.assemble(run, dispatch.history_after_event_id, tail)
        if history is not None:
            self.histories.put(run, history)

    def message_for(self, chain_id: str, item_id: str, completion: pb.Completion,
                    now_ms: int | None = None) -> tuple[dict, PendingChain] | None:
        """The worker message of the workflow task a task's result wakes, if this
        supervisor holds the run's history through that task's start and nothing after."""
        run = (completion.workflow_id, completion.run_id)
        facts = self._runs.get(run)
        history = self.histories.peek(run)
        if facts is None or not history or completion.WhichOneof("outcome") != "result":
            return None
        last = history[-1]
        if (last.get("type") != "TaskStarted" or last.get("key") != completion.task_key
                or last.get("attempt") != completion.attempt
                or not isinstance(last.get("event_id"), int)):
            return None   # the cache missed some news (or holds other news): no chain
        # Never before the task's start in the history (the leader's clock stamped it).
        time_ms = max(int(time.time() * 1000) if now_ms is None else now_ms,
                      int(last.get("time_ms") or 0))
        event = {"type": "TaskCompleted", "key": completion.task_key,
                 "result": bytes(completion.result), "attempt": completion.attempt,
                 "event_id": last["event_id"] + 1, "time_ms": time_ms}
        message = {"op": "workflow_task", "id": chain_id, "workflow_type": facts.workflow_type,
                   "workflow_id": completion.workflow_id, "run_id": completion.run_id,
                   "workflow_attempt": facts.workflow_attempt,
                   "start_time_ms": facts.start_time_ms, "input": history[0].get("input"),
                   "history": history + [event]}
        return message, PendingChain(item_id, completion, event["event_id"], time_ms,
                                     facts.workflow_attempt)


def attach(completion: pb.Completion, chain: PendingChain, commands_packed: bytes,
           bytes_max: int) -> bool:
    """Put the chained workflow task's commands on the task's completion, if the whole
    still fits one completion (else the result goes alone)."""
    chained = pb.ChainedWorkflowTask(seen_event_id=chain.seen_event_id,
                                     completed_time_ms=chain.completed_time_ms,
                                     workflow_commands=commands_packed,
                                     workflow_attempt=chain.workflow_attempt)
    if completion.ByteSize() + chained.ByteSize() + 8 > bytes_max:
        return False
    completion.then_workflow_task.CopyFrom(chained)
    return True

