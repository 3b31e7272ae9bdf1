"""A worker process: runs one module's workflows and tasks for its supervisor.

    python -m coda.supervisor.worker MODULE [--payload-bytes-max N]

MODULE is imported with the current directory on sys.path; its @coda.workflow and
@coda.task functions are what this worker runs. The channel to the supervisor is the
process's original stdin/stdout, carrying the frames of coda.supervisor.frames in the
protocol of docs/execution-protocol.md ("Supervisor ⇄ worker"). Before user code is
imported, fd 1 and sys.stdout are pointed at stderr and fd 0 at /dev/null, so a `print`
or an `input()` in user code can't corrupt or steal frames.

- Workflow tasks run on the event loop thread, one at a time (workflow code is
  deterministic and never blocks: it only awaits Coda futures). Live runs stay in a
  bounded LRU (`RunCache`); a dispatch that extends what a cached run was fed only feeds
  the new events ("sticky"), anything else replays the history into a new run. The `done`
  of a workflow task carries `"cached": bool`, whether a live run was reused (for tests
  and metrics; the supervisor may ignore it).
- Tasks run concurrently: async ones as asyncio tasks, sync ones on a bounded thread
  pool (with the task's contextvars, so coda.context.heartbeat works there too).
- `stop`: no new work (answered with a WorkerStopping error), in-flight tasks finish and
  report, then exit 0. End of stdin: the supervisor is gone, exit at once.
- A module that can't be loaded: its traceback goes to stderr, a `{"op": "fatal", "error"}`
  frame (instead of `ready`) tells the supervisor why, and the worker exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import os
import sys
import traceback
import dataclasses
from dataclasses import dataclass

from coda.client import sdk, task_context
from coda.client.workflow_runtime import RunInfo, WorkflowRun
from coda.errors import CodaError, PayloadError
from coda.flow import limits
from coda.process import tune_process
from coda.storage import codec
from coda.supervisor import frames
from coda.supervisor.worker_reads import WorkerReads

RUN_CACHE_RUNS_MAX = 500
SYNC_TASK_THREADS_MAX = 32
FINAL_COMMANDS = frozenset({"CompleteWorkflow", "FailWorkflow", "CancelWorkflow",
                            "ContinueAsNew"})
# The history event each workflow command becomes once committed (a cached run checks
# that what it emitted last time did commit; see LiveRun.extended_by).
RECORDED_AS = {"ScheduleTask": "TaskScheduled", "StartTimer": "TimerStarted",
               "StartChildWorkflow": "ChildWorkflowScheduled", "SetState": "StateSet",
               "SignalExternal": "SignalExternalScheduled", "RecordMarker": "MarkerRecorded"}
READ_RECORDED_AS = {"state": "StateRead", "broadcast": "BroadcastRead"}


def log(message: str) -> None:
    print(f"coda worker pid {os.getpid()}: {message}", file=sys.stderr, flush=True)


def error(type_name: str, message: str, *, stack: str = "", non_retryable: bool = False) -> dict:
    return {"type": type_name, "message": message, "stack": stack, "non_retryable": non_retryable}


def error_of(exc: BaseException, *, non_retryable: bool) -> dict:
    stack = "".join(traceback.format_exception(exc))
    return error(type(exc).__name__, str(exc), stack=stack, non_retryable=non_retryable)


def done_error(item_id, err: dict) -> dict:
    return {"op": "done", "id": item_id, "error": err}


# --- the module's definitions ----------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _signature(fn) -> inspect.Signature:
    """inspect.signature, once per function: it was ~6 % of a worker's samples under W-seq
    (each workflow task checked its run's input against it). Functions are the module's
    own, few and long-lived."""
    return inspect.signature(fn)

class ModuleLoadError(CodaError):
    """MODULE imported, but what it defines can't be served."""


@dataclass(frozen=True)
class Registry:
    module: str
    workflows: dict      # name -> sdk.WorkflowDefinition
    tasks: dict          # name -> sdk.TaskDefinition

    def ready_frame(self) -> dict:
        return {"op": "ready", "pid": os.getpid(), "workflow_types": sorted(self.workflows),
                "task_types": sorted(self.tasks),
                "upgradable_workflow_types": sorted(
                    n for n, d in self.workflows.items() if d.versioning == "auto_upgrade")}


def load_registry(module_name: str) -> Registry:
    module = importlib.import_module(module_name)
    tables = {sdk.WorkflowDefinition: {}, sdk.TaskDefinition: {}}
    for value in list(vars(module).values()):
        try:
            definition = sdk.definition_of(value)
        except Exception:  # an object with an odd __getattr__ is not a definition
            continue
        table = tables.get(type(definition))
        if table is None:
            continue
        existing = table.get(definition.name)
        if existing is not None and existing.fn is not definition.fn:
            raise ModuleLoadError(
                f"module {module_name} defines two {type(definition).__name__}s named "
                f"{definition.name!r}: {existing.fn.__qualname__} and {definition.fn.__qualname__}")
        table[definition.name] = definition
    workflows, tasks = tables[sdk.WorkflowDefinition], tables[sdk.TaskDefinition]
    if not workflows and not tasks:
        raise ModuleLoadError(f"module {module_name} defines no @coda.workflow or @coda.task "
                              "function (at its top level)")
    return Registry(module_name, workflows, tasks)


# --- workflow tasks ----------------------------------------------------------------------------

@dataclass
class LiveRun:
    run: WorkflowRun
    fed_events: int = 0
    # What identifies the last event it was fed (event_fingerprint): an id alone is not
    # enough, since a chained workflow task (the supervisor's own TaskCompleted) may have
    # run on an event Flow then recorded otherwise (later, or another event in its place).
    last_event: object = None
    # ScheduleTask keys the run emitted last time: a history that extends what the run was
    # fed must also record them, or those commands never committed (a lost completion, a
    # redelivered dispatch) and the run would not emit them again. Then: replay.
    awaiting_keys: frozenset = frozenset()
    # And how many events of each other kind its last commands must have become.
    awaiting_events: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def extended_by(self, history: list) -> bool:
        fed = self.fed_events
        if len(history) < fed or (fed and event_fingerprint(history[fed - 1]) != self.last_event):
            return False
        recorded = {e.get("key") for e in history[fed:] if e.get("type") == "TaskScheduled"}
        kinds = collections.Counter(e.get("type") for e in history[fed:])
        return self.awaiting_keys <= recorded and all(
            kinds[kind] >= count for kind, count in self.awaiting_events.items())

    def expect(self, commands: list) -> None:
        self.awaiting_keys = frozenset(c["key"] for c in commands if c["type"] == "ScheduleTask")
        self.awaiting_events = collections.Counter(
            READ_RECORDED_AS.get(c.get("kind")) if c["type"] == "RecordRead"
            else RECORDED_AS.get(c["type"]) for c in commands)
        self.awaiting_events.pop(None, None)


def event_fingerprint(event: dict) -> tuple:
    return (event.get("event_id"), event.get("type"), event.get("key"), event.get("time_ms"))


class RunCache:
    """Bounded LRU of live workflow runs, keyed (workflow_id, run_id, workflow_attempt)."""

    def __init__(self, runs_max: int = RUN_CACHE_RUNS_MAX):
        assert runs_max >= 1
        self.runs_max = runs_max
        self._runs: collections.OrderedDict = collections.OrderedDict()

    def take(self, key, history: list) -> LiveRun | None:
        """The cached run if `history` extends what it was fed; it leaves the cache either way."""
        live = self._runs.pop(key, None)
        return live if live is not None and live.extended_by(history) else None

    def put(self, key, live: LiveRun) -> None:
        self._runs[key] = live
        self._runs.move_to_end(key)
        while len(self._runs) > self.runs_max:
            self._runs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._runs)


def final_failure(definition, type_name: str, message: str) -> dict:
    """A FailWorkflow that no retry can mend (the same history fails the same way)."""
    retry = definition.retry.to_wire()
    retry["maximum_attempts"] = 1
    retry["non_retryable_errors"] = sorted(set(retry["non_retryable_errors"]) | {type_name})
    return {"type": "FailWorkflow", "error": {"type": type_name, "message": message},
            "retry": retry}


def decoded_event(event: dict) -> dict:
    """History holds task results as the msgpack bytes the task sent; the runtime wants values."""
    if event.get("type") == "TaskCompleted" and isinstance(event.get("result"), bytes):
        value = codec.decode_payload(event["result"], what=f"result of task {event.get('key')}")
        return dict(event, result=value)
    return event


@dataclass
class Suspended:
    """A workflow task whose run waits for reads only the supervisor can answer; the
    worker answers them (WorkerReads) and calls WorkflowTasks.resume."""
    msg: dict
    definition: object
    live: "LiveRun"
    key: tuple
    commands: list
    cached: bool


class WorkflowTasks:
    def __init__(self, registry: Registry, payload_bytes_max: int,
                 runs_max: int = RUN_CACHE_RUNS_MAX, reads: WorkerReads | None = None):
        self.registry = registry
        self.payload_bytes_max = payload_bytes_max
        self.cache = RunCache(runs_max)
        self.reads = reads

    def _resolver(self, kind: str, params: dict, min_version: int):
        if kind == "broadcast" and self.reads is not None:
            return self.reads.lookup(params["name"], min_version)
        return None  # state reads of other workflows always go to Flow

    def handle(self, msg: dict):
        """One `workflow_task` message in, its `done` frame out (or Suspended, while the
        run waits for reads). Never raises."""
        item_id = msg["id"]
        definition = self.registry.workflows.get(msg.get("workflow_type"))
        if definition is None:
            return done_error(item_id, error(
                "UnknownWorkflowType", f"workflow type {msg.get('workflow_type')!r} is not defined "
                f"in module {self.registry.module} (known: {sorted(self.registry.workflows)})"))
        key = (msg["workflow_id"], msg["run_id"], int(msg.get("workflow_attempt") or 1))
        history = msg.get("history") or []
        live = self.cache.take(key, history)
        cached = live is not None
        try:
            if live is None:
                args, failure = self._arguments(definition, msg.get("input"))
                if failure is not None:
                    return {"op": "done", "id": item_id, "commands": [failure], "cached": False}
                live = LiveRun(WorkflowRun(definition, args, RunInfo(
                    msg["workflow_id"], msg["run_id"], int(msg.get("start_time_ms") or 0),
                    attempt=key[2])))
                live.run.resolver = self._resolver
                live.run.payload_bytes_max = self.payload_bytes_max
            commands = live.run.advance([decoded_event(e) for e in history[live.fed_events:]])
        except Exception as exc:  # NonDeterminismError, a bug: the workflow task fails
            return done_error(item_id, error_of(exc, non_retryable=False))
        if live.run.pending_reads and not live.run.finished:
            return Suspended(msg, definition, live, key, commands, cached)
        return self._done(msg, definition, live, key, commands, cached)

    def resume(self, suspended: Suspended, answers: list) -> object:
        """Continue a suspended workflow task with the answers to its pending reads."""
        live = suspended.live
        try:
            live.run.complete_reads(answers)
            more = live.run.advance([])
        except Exception as exc:
            return done_error(suspended.msg["id"], error_of(exc, non_retryable=False))
        suspended.commands = suspended.commands + more
        if live.run.pending_reads and not live.run.finished:
            return suspended
        return self._done(suspended.msg, suspended.definition, live, suspended.key,
                          suspended.commands, suspended.cached)

    def _done(self, msg: dict, definition, live: LiveRun, key: tuple, commands: list,
              cached: bool) -> dict:
        item_id, history = msg["id"], msg.get("history") or []
        commands = self._finish(definition, commands)
        if not live.run.finished and not any(c["type"] in FINAL_COMMANDS for c in commands):
            live.fed_events = len(history)
            live.last_event = event_fingerprint(history[-1]) if history else None
            live.expect(commands)
            self.cache.put(key, live)
        return {"op": "done", "id": item_id, "commands": commands, "cached": cached}

    def _arguments(self, definition, data) -> tuple[dict, dict | None]:
        """The workflow's kwargs, or a FailWorkflow when the input can never fit the function."""
        try:
            args = codec.decode_payload(data, what="workflow input") if data else None
        except PayloadError as exc:
            return {}, final_failure(definition, "PayloadError", exc.message)
        args = {} if args is None else args
        if not isinstance(args, dict):
            return {}, final_failure(definition, "PayloadError", f"workflow input must be a map of "
                                     f"keyword arguments, got {type(args).__name__}")
        try:
            _signature(definition.fn).bind(**args)
        except TypeError as exc:
            return {}, final_failure(definition, "TypeError",
                                     f"workflow {definition.name} can't take its input: {exc}")
        return args, None

    def _finish(self, definition, commands: list) -> list:
        """Encode the result, attach retry policies, enforce the payload limit on task args."""
        out = []
        for command in commands:
            kind = command["type"]
            if kind == "CompleteWorkflow":
                try:
                    command = dict(command, result=codec.encode_payload(
                        command["result"], what="workflow result", limit_bytes=self.payload_bytes_max))
                except PayloadError as exc:
                    command = final_failure(definition, "PayloadError", exc.message)
            elif kind == "FailWorkflow" and command.get("final"):
                command = final_failure(definition, command["error"]["type"],
                                        command["error"]["message"])
            elif kind == "FailWorkflow":
                command = dict(command, retry=definition.retry.to_wire())
            elif kind == "ScheduleTask" and len(command["args"]) > self.payload_bytes_max:
                return [final_failure(
                    definition, "PayloadError", f"args of task {command['task']} are "
                    f"{len(command['args'])} bytes encoded, over the limit of "
                    f"{self.payload_bytes_max} bytes")]
            out.append(command)
        return out


# --- tasks -----------------------------------------------------------------------------------

class TaskRunner:
    """Runs `task` messages concurrently; each reports its own `done` through `send`."""

    def __init__(self, registry: Registry, payload_bytes_max: int, *, send, send_nowait,
                 threads: int = SYNC_TASK_THREADS_MAX):
        self.registry = registry
        self.payload_bytes_max = payload_bytes_max
        self.send, self.send_nowait = send, send_nowait
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="coda-task")
        self.running: dict[str, asyncio.Task] = {}
        self._sync_ids: set[str] = set()

    def start(self, msg: dict) -> None:
        item_id = msg["id"]
        task = asyncio.get_running_loop().create_task(self._run(msg))
        self.running[item_id] = task
        task.add_done_callback(lambda _: self.running.pop(item_id, None))

    def cancel(self, item_id) -> None:
        task = self.running.get(item_id)
        # A sync task's thread can't be interrupted: it finishes and reports (the protocol).
        if task is not None and item_id not in self._sync_ids:
            task.cancel()

    async def wait_all(self) -> None:
        while self.running:
            await asyncio.gather(*list(self.running.values()), return_exceptions=True)

    async def _run(self, msg: dict) -> None:
        try:
            done = await self._outcome(msg)
        except Exception as exc:  # a bug here must still answer the supervisor
            done = done_error(msg["id"], error_of(exc, non_retryable=False))
        await self.send(done)

    async def _outcome(self, msg: dict) -> dict:
        item_id = msg["id"]
        definition = self.registry.tasks.get(msg.get("task"))
        if definition is None:
            return done_error(item_id, error(
                "UnknownTaskType", f"task {msg.get('task')!r} is not defined in module "
                f"{self.registry.module} (known: {sorted(self.registry.tasks)})", non_retryable=True))
        try:
            kwargs = codec.decode_payload(msg["args"], what=f"args of task {definition.name}") \
                if msg.get("args") else {}
            details = msg.get("heartbeat_details")
            details = codec.decode_payload(details, what="heartbeat details") if details else None
        except PayloadError as exc:
            return done_error(item_id, error("PayloadError", exc.message, non_retryable=True))
        if not isinstance(kwargs, dict):
            return done_error(item_id, error("PayloadError", f"args of task {definition.name} must "
                                             "be a map of keyword arguments", non_retryable=True))
        info = task_context.TaskInfo(msg.get("workflow_id", ""), msg.get("run_id", ""),
                                     msg.get("key", ""), int(msg.get("attempt") or 1),
                                     msg.get("idempotency_key", ""), details)
        return await self._call(definition, item_id, kwargs, info)

    async def _call(self, definition, item_id: str, kwargs: dict, info) -> dict:
        loop = asyncio.get_running_loop()
        scope = task_context.TaskScope(info, item_id, loop=loop, send=self.send_nowait,
                                       payload_bytes_max=self.payload_bytes_max)
        task_context.enter(scope)  # this asyncio task's own context
        try:
            if definition.is_async:
                value = await definition.fn(**kwargs)
            else:
                self._sync_ids.add(item_id)
                call = functools.partial(contextvars.copy_context().run, definition.fn, **kwargs)
                value = await loop.run_in_executor(self.executor, call)
                if inspect.isawaitable(value):
                    value = await value
        except asyncio.CancelledError:
            return done_error(item_id, error("CancelledError", f"task {definition.name} "
                                             f"({info.key}) was cancelled"))
        except BaseException as exc:  # SystemExit in a task ends the task, not the worker
            non_retryable = type(exc).__name__ in definition.retry.non_retryable_errors
            return done_error(item_id, error_of(exc, non_retryable=non_retryable))
        finally:
            scope.close()
            self._sync_ids.discard(item_id)
        try:
            result = codec.encode_payload(value, what=f"result of task {definition.name}",
                                          limit_bytes=self.payload_bytes_max)
        except PayloadError as exc:
            return done_error(item_id, error("PayloadError", exc.message, non_retryable=True))
        return {"op": "done", "id": item_id, "result": result}


# --- the process ----------------------------------------------------------------------------

def exit_now(code: int) -> None:
    """Leave without joining threads: a sync task stuck in user code must not keep us."""
    sys.stderr.flush()
    os._exit(code)


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, frames.CorkedWriter(writer)

    async def receive(self) -> dict | None:
        return await frames.read_frame(self.reader)

    def send_nowait(self, msg: dict) -> None:
        try:
            data = frames.encode_frame(msg)
        except frames.FrameError as exc:
            if msg.get("op") != "done":
                log(f"dropped a {msg.get('op')!r} frame: {exc}")
                return
            data = frames.encode_frame(done_error(msg.get("id"), error("FrameError", str(exc))))
        self.writer.write(data)

    async def send(self, msg: dict) -> None:
        self.send_nowait(msg)
        try:
            await self.writer.drain()
        except ConnectionError:
            exit_now(0)  # the supervisor is gone: nobody to report to


class Worker:
    def __init__(self, registry: Registry, channel: Channel, payload_bytes_max: int):
        self.registry = registry
        self.channel = channel
        self.reads = WorkerReads(channel.send_nowait)
        task_context.set_broadcast_reader(self.reads)
        self.workflows = WorkflowTasks(registry, payload_bytes_max, reads=self.reads)
        self._suspended: set[asyncio.Task] = set()
        self.tasks = TaskRunner(registry, payload_bytes_max, send=channel.send,
                                send_nowait=channel.send_nowait)
        self.stopping = False
        self._stop_task: asyncio.Task | None = None

    async def serve(self) -> None:
        await self.channel.send(self.registry.ready_frame())
        while True:
            try:
                msg = await self.channel.receive()
            except frames.FrameError as exc:
                log(f"the supervisor sent a malformed frame, exiting: {exc}")
                self.channel.writer.flush()  # the results of work done before it
                exit_now(2)
            if msg is None:
                exit_now(0)  # the supervisor is gone: what is corked has no reader
            try:
                await self.handle(msg)
            except Exception as exc:
                log(f"can't handle {msg.get('op')!r}: {traceback.format_exc()}")
                if isinstance(msg.get("id"), str):
                    await self.channel.send(done_error(msg["id"], error_of(exc, non_retryable=False)))

    async def handle(self, msg: dict) -> None:
        op = msg["op"]
        if op == "cancel":
            self.tasks.cancel(msg.get("id"))
        elif op == "broadcast":
            self.reads.on_broadcast(msg)
        elif op == "state_value":
            self.reads.on_state_value(msg)
        elif op == "stop":
            if self._stop_task is None:
                self.stopping = True
                self._stop_task = asyncio.get_running_loop().create_task(self._stop())
        elif op not in ("workflow_task", "task"):
            log(f"ignored a frame with unknown op {op!r}")
        elif self.stopping:
            await self.channel.send(done_error(msg["id"], error(
                "WorkerStopping", f"worker pid {os.getpid()} is stopping and takes no new work")))
        elif op == "workflow_task":
            outcome = self.workflows.handle(msg)
            if isinstance(outcome, Suspended):
                task = asyncio.get_running_loop().create_task(self._after_reads(outcome))
                self._suspended.add(task)
                task.add_done_callback(self._suspended.discard)
            else:
                await self.channel.send(outcome)
        else:
            self.tasks.start(msg)

    async def _after_reads(self, outcome: Suspended) -> None:
        """Answer a suspended workflow task's reads (the serve loop keeps reading frames,
        which is where the answers arrive), then finish it."""
        while isinstance(outcome, Suspended):
            try:
                answers = await asyncio.gather(*(self.reads.answer(r)
                                                 for r in outcome.live.run.pending_reads))
            except Exception as exc:  # the workflow task fails; Flow retries it
                outcome = done_error(outcome.msg["id"], error_of(exc, non_retryable=False))
                break
            outcome = self.workflows.resume(outcome, answers)
        await self.channel.send(outcome)

    async def _stop(self) -> None:
        while self._suspended:
            await asyncio.gather(*list(self._suspended), return_exceptions=True)
        await self.tasks.wait_all()
        self.channel.writer.flush()
        try:
            await self.channel.writer.drain()
        except ConnectionError:
            pass
        exit_now(0)


def take_channel_fds() -> tuple[int, int]:
    """Keep the real stdin/stdout for frames; user code gets /dev/null and stderr instead."""
    read_fd, write_fd = os.dup(0), os.dup(1)  # not inheritable: user subprocesses don't get them
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return read_fd, write_fd


def send_fatal(write_fd: int, exc: BaseException, module: str) -> None:
    message = f"can't load module {module}: {type(exc).__name__}: {exc}"
    frame = frames.encode_frame({"op": "fatal", "pid": os.getpid(), "error": error(
        type(exc).__name__, message, stack="".join(traceback.format_exception(exc)),
        non_retryable=True)})
    try:
        while frame:
            frame = frame[os.write(write_fd, frame):]
    except OSError:
        pass  # the supervisor is gone; stderr has the story


async def serve(registry: Registry, read_fd: int, write_fd: int, payload_bytes_max: int) -> None:
    reader, writer = await frames.open_pipe_streams(read_fd, write_fd)
    await Worker(registry, Channel(reader, writer), payload_bytes_max).serve()


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m coda.supervisor.worker",
                                     description="A Coda worker process (started by a supervisor).")
    parser.add_argument("module", help="module path of the workflows and tasks (importable from "
                                       "the current directory)")
    parser.add_argument("--payload-bytes-max", type=int, default=limits.payload_bytes_default,
                        help="largest encoded result this worker sends (bytes)")
    options = parser.parse_args(argv)
    if not 0 < options.payload_bytes_max <= limits.payload_bytes_max:
        parser.error(f"--payload-bytes-max must be in 1..{limits.payload_bytes_max}")
    return options


def main(argv=None) -> None:
    options = parse_args(argv)
    read_fd, write_fd = take_channel_fds()
    sys.path.insert(0, os.getcwd())
    try:
        registry = load_registry(options.module)
    except BaseException as exc:  # ImportError, SyntaxError, a SystemExit at import time ...
        log(f"can't load module {options.module}:\n{''.join(traceback.format_exception(exc))}")
        send_fatal(write_fd, exc, options.module)
        exit_now(1)
    tune_process()
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(serve(registry, read_fd, write_fd, options.payload_bytes_max))


if __name__ == "__main__":
    main()
