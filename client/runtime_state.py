"""Workflow state, reads and signals inside a WorkflowRun (mixed into workflow_runtime).

Every call here replays the same way, because everything that came from outside the
workflow is in its history:

- `set_state(key, value)`: the n-th call emits `SetState` (committed with the workflow
  task, history `StateSet`); on replay the n-th call is checked against the n-th recorded
  `StateSet` (a different key is a NonDeterminismError) and emits nothing. Reading the
  run's own state is local: it is what the run's own calls set.
- Reads of what others own (another workflow's state, a broadcast variable) are done by
  the worker through its supervisor (`resolver`, or `pending_reads` that the worker
  answers with `complete_reads`), and recorded with `RecordRead` as `StateRead` /
  `BroadcastRead` events in the order they were made: the n-th read of a replay returns
  the n-th recorded answer. A broadcast read records its value only when the version
  differs from the one the run saw last (else the version is enough), and a run never
  sees a broadcast's version go backwards: a cache older than what it saw is not used.
- Signals: `SignalReceived` events are revealed like task results (in the steps the
  workflow-task markers record) into a buffer per name; `wait_signal` takes the oldest
  one of its name when the workflow awaits it, so sending before the wait is fine.
- `signal_workflow` is a spawn (position-checked like tasks and timers), delivered by
  Flow's outbox; its future resolves when the target's shard took it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from coda import errors
from coda.errors import InvalidArgument, LimitExceeded, NotFound
from coda.flow import limits, validate
from coda.storage import codec

MISSING = object()
SIGNAL_PREFIX = "signal:"
READ_EVENT_KINDS = {"StateRead": "state", "BroadcastRead": "broadcast"}


def state_key(key) -> str:
    return validate.identifier(key, "state key", limits.state_key_bytes_max)


@dataclass
class PendingRead:
    """A read the worker must answer: kind 'state' {workflow_id, key} or 'broadcast'
    {name}, with the oldest broadcast version the run may be shown."""
    seq: int
    kind: str
    params: dict
    min_version: int
    future: object


def _outcome(kind: str, params: dict, answer: dict, default):
    """(ok, value) of a read's answer: the value, the default, or NotFound."""
    if answer.get("found"):
        value = answer.get("value")
        return True, codec.unpack(value) if isinstance(value, bytes) else value
    if default is not MISSING:
        return True, default
    message = answer.get("message") or (
        f"broadcast variable {params['name']!r} is not set" if kind == "broadcast" else
        f"workflow {params['workflow_id']!r} has no state key {params['key']!r}")
    return False, NotFound(message, **params)


class StateAndSignals:
    """State kept by WorkflowRun.__init__ calling `_init_state_and_signals`."""

    def _init_state_and_signals(self) -> None:
        self._state: dict[str, object] = {}
        self._state_sets = 0
        self._recorded_state_sets: list[str] = []
        self._reads = 0
        self._recorded_reads: list[dict] = []
        self._broadcast_seen: dict[str, dict] = {}   # name -> last answer this run saw
        self.pending_reads: list[PendingRead] = []
        # Set by the worker: (kind, params, min_version) -> answer dict or None (not at hand).
        self.resolver = None
        self._signals: dict[str, collections.deque] = {}
        self._recorded_patches: set[str] = set()
        self._patches: dict[str, bool] = {}   # decided once per run, then memoized
        self.replaying = False                # set by WorkflowRun._step
        # The worker sets its own limit; a value over it is refused at the call.
        self.payload_bytes_max = limits.payload_bytes_default

    # --- what history holds ----------------------------------------------------------------
    def _scan_recorded(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "StateSet":
            self._recorded_state_sets.append(event.get("key"))
        elif kind in READ_EVENT_KINDS:
            self._recorded_reads.append(event)
        elif kind == "MarkerRecorded" and event.get("kind") == "patch":
            self._recorded_patches.add(event.get("patch_id"))

    def _absorb_signal(self, event: dict) -> None:
        payload = event.get("payload")
        value = codec.unpack(payload) if isinstance(payload, bytes) else payload
        self._signals.setdefault(event.get("name"), collections.deque()).append(
            (value, int(event.get("time_ms") or 0)))

    # --- state -----------------------------------------------------------------------------
    def set_state(self, key: str, value) -> None:
        key = state_key(key)
        encoded = codec.encode_payload(value, what=f"state {key!r}",
                                       limit_bytes=self.payload_bytes_max)
        if key not in self._state and len(self._state) >= limits.state_keys_per_run_max:
            raise LimitExceeded(f"workflow {self.info.workflow_id} has "
                                f"{limits.state_keys_per_run_max} state keys, the limit",
                                limit=limits.state_keys_per_run_max)
        n = self._state_sets
        self._state_sets += 1
        if n < len(self._recorded_state_sets):
            if self._recorded_state_sets[n] != key:
                self._nondeterministic(f"set_state #{n} sets {key!r}, but the history recorded "
                                       f"{self._recorded_state_sets[n]!r} at that position")
        else:
            self._pending_commands.append({"type": "SetState", "key": key, "value": encoded})
        self._state[key] = codec.unpack(encoded)  # a copy: later mutation doesn't leak in

    def own_state(self, key: str, default=MISSING):
        key = state_key(key)
        if key in self._state:
            return codec.unpack(codec.pack(self._state[key]))
        if default is not MISSING:
            return default
        raise NotFound(f"workflow {self.info.workflow_id} has no state key {key!r}",
                       workflow_id=self.info.workflow_id, key=key)

    # --- reads of what others own ---------------------------------------------------------
    def read(self, kind: str, params: dict, default=MISSING):
        from coda.client.workflow_runtime import CodaFuture
        if len(self.pending_reads) >= limits.workflow_task_commands_max:
            # Each read becomes a command of this workflow task: refused at the call.
            raise LimitExceeded(f"workflow {self.info.workflow_id} has "
                                f"{len(self.pending_reads)} reads waiting in one step, the "
                                f"limit is {limits.workflow_task_commands_max}",
                                limit=limits.workflow_task_commands_max)
        seq = self._reads
        self._reads += 1
        what = params.get("name") or f"{params.get('workflow_id')}:{params.get('key')}"
        future = CodaFuture(f"read of {kind} {what}")
        future.read_default = default
        if seq < len(self._recorded_reads):
            event = self._recorded_reads[seq]
            recorded = {k: event.get(k) for k in params}
            if READ_EVENT_KINDS.get(event.get("type")) != kind or recorded != params:
                self._nondeterministic(
                    f"read #{seq} is of {kind} {params}, but the history recorded a "
                    f"{event.get('type')} of {recorded} at that position")
            answer = dict(event)
            if kind == "broadcast" and "value" not in event and event.get("found"):
                answer["value"] = self._broadcast_seen[params["name"]].get("value")
            self._settle_read(future, kind, params, answer, record=False)
            return future
        seen = self._broadcast_seen.get(params.get("name")) if kind == "broadcast" else None
        min_version = seen["version"] if seen else 0
        answer = self.resolver(kind, params, min_version) if self.resolver else None
        if answer is not None:
            self._settle_read(future, kind, params, answer, record=True, seq=seq)
        else:
            self.pending_reads.append(PendingRead(seq, kind, params, min_version, future))
        return future

    def complete_reads(self, answers: list[dict]) -> None:
        """The worker's answers to `pending_reads`, in their order."""
        pending, self.pending_reads = self.pending_reads, []
        for read, answer in zip(pending, answers):
            self._settle_read(read.future, read.kind, read.params, answer, record=True,
                              seq=read.seq)

    def _settle_read(self, future, kind: str, params: dict, answer: dict, *, record: bool,
                     seq: int = 0) -> None:
        if record:
            command = {"type": "RecordRead", "kind": kind, "seq": seq,
                       "found": bool(answer.get("found")), **params}
            if answer.get("message"):
                command["message"] = str(answer["message"])[:1000]
            value = answer.get("value")
            seen = self._broadcast_seen.get(params.get("name"))
            if kind == "broadcast":
                command["version"] = int(answer.get("version") or 0)
            if answer.get("found") and not (kind == "broadcast" and seen
                                            and seen["version"] == command["version"]):
                command["value"] = value
            self._pending_commands.append(command)
        if kind == "broadcast":
            self._broadcast_seen[params["name"]] = {
                "version": int(answer.get("version") or 0), "found": bool(answer.get("found")),
                "value": answer.get("value")}
        ok, value = _outcome(kind, params, answer, future.read_default)
        future.set_result(value) if ok else future.set_error(value)

    # --- patches (versioning) ----------------------------------------------------------------
    def patched(self, patch_id: str) -> bool:
        """True on the new code path: in a new execution (recorded as a marker) and in
        replays of histories that have the marker; False in replays of histories recorded
        before the change. Decided once per run."""
        if patch_id not in self._patches:
            if patch_id in self._recorded_patches:
                self._patches[patch_id] = True
            elif self.replaying:
                self._patches[patch_id] = False
            else:
                self._recorded_patches.add(patch_id)
                self._pending_commands.append({"type": "RecordMarker", "kind": "patch",
                                               "patch_id": patch_id})
                self._patches[patch_id] = True
        return self._patches[patch_id]

    # --- signals ---------------------------------------------------------------------------
    def take_signal(self, name: str):
        """(value, time_ms) of the oldest buffered signal of that name, or None."""
        buffered = self._signals.get(name)
        return buffered.popleft() if buffered else None

    def signal_workflow(self, workflow_id: str, name: str, payload) -> object:
        from coda.client.workflow_runtime import CodaFuture
        encoded = codec.encode_payload(payload, what=f"payload of signal {name!r}",
                                       limit_bytes=self.payload_bytes_max)
        recorded = len(self._futures)
        key = f"g:{recorded}"
        self._check_matches_history(recorded, key, SIGNAL_PREFIX + name)
        self._spawns.append((key, SIGNAL_PREFIX + name))
        future = CodaFuture(f"signal {name} to {workflow_id} ({key})")
        self._futures[key] = future
        if key in self._results:
            self._settle_known(future, self._results[key])
        elif recorded >= len(self._scheduled):
            self._pending_commands.append({"type": "SignalExternal", "key": key,
                                           "workflow_id": workflow_id, "name": name,
                                           "payload": encoded})
        return future

    @staticmethod
    def signal_failure(event: dict) -> errors.CodaError:
        error = event.get("error") or {}
        return errors.from_wire({"code": error.get("type"), "message": error.get("message", "")})

    def _nondeterministic(self, what: str) -> None:
        from coda.client.workflow_runtime import NonDeterminismError
        self._violation = NonDeterminismError(
            f"workflow {self.definition.name} ({self.info.workflow_id}): {what}. Check that "
            "your workflow is deterministic.")
        raise self._violation


def check_read_default(default) -> None:
    if default is not MISSING:
        try:
            codec.pack(default)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"default must be msgpack-encodable: {exc}",
                                  field="default") from None
