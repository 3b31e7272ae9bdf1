"""The supervisor's worker processes: spawn, route work, watch, restart.

    pool = WorkerPool("myapp.flows", 4, on_event=handle, payload_bytes_max=2 * MIB)
    types = await pool.start()      # {"workflow_types": [...], "task_types": [...]}
    pool.submit({"op": "task", "id": "t-1", ...})     # on_event({"op": "done", "id": "t-1", ...})
    await pool.stop(deadline_s=10)

All methods run on the supervisor's event loop (submit and cancel are plain calls that
only buffer a frame). Routing: a workflow task goes to the worker picked by a stable hash
of its workflow id, so its live run stays cached there (sticky); while that worker is
down, to the next live one. A task goes to the live worker with the fewest items in
flight. Items submitted while no worker is live wait for the first one back.

A worker that exits while the pool is not stopping is reported item by item
(`done` with a WorkerDied error) and restarted after a backoff that doubles per quick
death (from restart_backoff_initial_s up to restart_backoff_max_s) and resets once a
worker stays up BACKOFF_RESET_AFTER_S. Workers inherit the supervisor's stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import traceback
from dataclasses import dataclass, field

from coda.errors import ConfigError
from coda.supervisor import frames

BACKOFF_RESET_AFTER_S = 30.0
# Worker frames that ask the supervisor to read something (coda.supervisor.worker_reads);
# the pool hands them on with a `reply` callable that answers that worker.
READ_OPS = frozenset({"broadcast_get", "state_get", "stats"})
READY_TIMEOUT_S = 60.0  # importing a user module can be slow (it may import half of PyPI)


class WorkerStartError(ConfigError):
    """A worker did not come up: its module fails to import, or it exited before `ready`."""


def exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


def home_index(workflow_id: str, workers: int) -> int:
    """The worker a workflow's tasks go to (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(workflow_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % workers


def _log(message: str) -> None:
    print(f"coda supervisor: {message}", file=sys.stderr, flush=True)


@dataclass(eq=False)
class _Process:
    """One spawned worker process that said `ready`."""
    proc: asyncio.subprocess.Process
    started_s: float
    in_flight: dict = field(default_factory=dict)   # item id -> item
    reader: asyncio.Task | None = None
    alive: bool = True       # False from its end of stream on: nothing more is routed to it
    stdin: frames.CorkedWriter | None = None  # its frames: proc.stdin, one write a turn

    def __post_init__(self):
        self.stdin = frames.CorkedWriter(self.proc.stdin)

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(eq=False)
class _Slot:
    index: int
    backoff_s: float
    process: _Process | None = None      # None while down or restarting
    restart: asyncio.Task | None = None

    @property
    def live(self) -> bool:
        return self.process is not None and self.process.alive


class WorkerPool:
    def __init__(self, module: str, workers: int, *, on_event, payload_bytes_max: int,
                 python: str = sys.executable, cwd: str | None = None, env: dict | None = None,
                 restart_backoff_initial_s: float = 0.2, restart_backoff_max_s: float = 10.0,
                 ready_timeout_s: float = READY_TIMEOUT_S):
        if workers < 1:
            raise ConfigError(f"a supervisor needs at least 1 worker, got {workers}", field="workers")
        assert 0 < restart_backoff_initial_s <= restart_backoff_max_s
        self.module = module
        self._on_event = on_event
        self._argv = [python, "-m", "coda.supervisor.worker", module,
                      "--payload-bytes-max", str(payload_bytes_max)]
        self._cwd, self._env = cwd, env  # env, when given, is the whole environment
        self._backoff_initial_s = restart_backoff_initial_s
        self._backoff_max_s = restart_backoff_max_s
        self._ready_timeout_s = ready_timeout_s
        self._slots = [_Slot(i, restart_backoff_initial_s) for i in range(workers)]
        self._pending: list[dict] = []
        self._types: dict | None = None
        self._stopping = False
        self._deaths = 0      # workers that exited while the pool was not stopping
        self._restarts = 0    # of those, restarted and ready again

    # --- the interface the supervisor uses ---------------------------------------------------
    async def start(self) -> dict:
        assert self._types is None, "start() once"
        results = await asyncio.gather(*(self._spawn(slot) for slot in self._slots),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop(deadline_s=0)
            raise failures[0]
        self._types = results[0]
        return dict(self._types)

    def submit(self, item: dict) -> None:
        assert isinstance(item.get("id"), str) and item.get("op") in ("workflow_task", "task"), item
        slot = self._route(item)
        if slot is None:
            self._pending.append(item)
            return
        try:
            data = frames.encode_frame(item)
        except frames.FrameError as exc:
            self._emit_soon({"op": "done", "id": item["id"], "error": {
                "type": "FrameError", "message": str(exc), "stack": "", "non_retryable": True}})
            return
        slot.process.in_flight[item["id"]] = item
        slot.process.stdin.write(data)

    def cancel(self, item_id: str) -> None:
        for item in self._pending:
            if item["id"] == item_id:
                self._pending.remove(item)
                self._emit_soon({"op": "done", "id": item_id, "error": {
                    "type": "CancelledError", "message": f"{item_id} was cancelled before it "
                    "reached a worker", "stack": "", "non_retryable": False}})
                return
        for slot in self._slots:
            if slot.live and item_id in slot.process.in_flight:
                slot.process.stdin.write(frames.encode_frame({"op": "cancel", "id": item_id}))
                return

    def send_all(self, frame: dict) -> None:
        """A frame for every live worker (a new broadcast version)."""
        for slot in self._slots:
            if slot.live:
                self._send_to(slot.process, frame)

    def _send_to(self, process: _Process, frame: dict) -> None:
        if not process.alive or process.stdin.is_closing():
            return
        try:
            process.stdin.write(frames.encode_frame(frame))
        except frames.FrameError as exc:
            _log(f"dropped a {frame.get('op')!r} frame for worker pid {process.pid}: {exc}")

    def in_flight(self) -> int:
        return len(self._pending) + sum(len(s.process.in_flight) for s in self._slots if s.process)

    def worker_pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.live]

    def worker_restarts(self) -> int:
        return self._restarts

    def statistics(self) -> dict:
        """For metrics: per worker slot (index -> pid or None while down, items in
        flight), items waiting for a live worker, deaths and restarts so far."""
        return {"workers": {s.index: {"pid": s.process.pid if s.live else None,
                                      "in_flight": len(s.process.in_flight) if s.process else 0}
                            for s in self._slots},
                "pending": len(self._pending), "deaths": self._deaths,
                "restarts": self._restarts}

    async def stop(self, deadline_s: float) -> None:
        """Ask every worker to finish what it runs; SIGKILL what is left at the deadline."""
        self._stopping = True
        self._pending.clear()
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
        processes = [s.process for s in self._slots if s.process is not None]
        for process in processes:
            if process.proc.returncode is None and not process.stdin.is_closing():
                process.stdin.write(frames.encode_frame({"op": "stop"}))
        readers = [p.reader for p in processes]
        if readers:
            _, late = await asyncio.wait(readers, timeout=max(deadline_s, 0))
            for process in processes:
                if process.reader in late and process.proc.returncode is None:
                    process.proc.kill()
            if late:
                await asyncio.wait(late)
        restarts = [s.restart for s in self._slots if s.restart is not None]
        if restarts:
            await asyncio.wait(restarts)

    # --- routing -------------------------------------------------------------------------------
    def _route(self, item: dict) -> _Slot | None:
        live = [s for s in self._slots if s.live]
        if not live or self._stopping:
            return None
        if item["op"] == "workflow_task":
            home = home_index(item["workflow_id"], len(self._slots))
            for step in range(len(self._slots)):
                slot = self._slots[(home + step) % len(self._slots)]
                if slot.live:
                    return slot
        return min(live, key=lambda s: (len(s.process.in_flight), s.index))

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            self.submit(item)

    # --- processes -----------------------------------------------------------------------------
    async def _spawn(self, slot: _Slot) -> dict:
        """Start slot's worker, wait for `ready`, put it in service; returns its types."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=None, cwd=self._cwd, env=self._env, limit=frames.STREAM_LIMIT_BYTES)
        except OSError as exc:
            raise WorkerStartError(f"can't start a worker ({' '.join(self._argv)}): {exc}") from None
        try:
            first = await self._first_frame(proc)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise
        loop = asyncio.get_running_loop()
        process = _Process(proc, started_s=loop.time())
        slot.process = process
        process.reader = loop.create_task(self._read(slot, process))
        types = {"workflow_types": list(first.get("workflow_types", [])),
                 "task_types": list(first.get("task_types", [])),
                 "upgradable_workflow_types": list(first.get("upgradable_workflow_types", []))}
        if self._types is not None and types != self._types:
            _log(f"worker pid {proc.pid} runs other types than the pool started with: {types}")
        self._flush_pending()
        return types

    async def _first_frame(self, proc) -> dict:
        try:
            first = await asyncio.wait_for(frames.read_frame(proc.stdout), self._ready_timeout_s)
        except asyncio.TimeoutError:
            raise WorkerStartError(f"worker pid {proc.pid} for module {self.module} was not ready "
                                   f"within {self._ready_timeout_s} s") from None
        if first is not None and first.get("op") == "ready":
            return first
        if first is not None and first.get("op") == "fatal":
            err = first.get("error") or {}
            raise WorkerStartError(f"worker pid {proc.pid}: {err.get('message')}\n"
                                   f"{err.get('stack', '')}".rstrip(), error_type=err.get("type"))
        if first is None:
            code = await proc.wait()
            raise WorkerStartError(f"worker pid {proc.pid} for module {self.module} exited with "
                                   f"{exit_description(code)} before it was ready (its stderr, "
                                   "above, says why)")
        raise WorkerStartError(f"worker pid {proc.pid} sent {first.get('op')!r} before `ready`")

    async def _read(self, slot: _Slot, process: _Process) -> None:
        reason = ""
        try:
            while (msg := await frames.read_frame(process.proc.stdout)) is not None:
                self._on_message(process, msg)
        except frames.FrameError as exc:
            reason = f" after a malformed frame ({exc})"
            process.proc.kill()
        process.alive = False
        code = await process.proc.wait()
        process.stdin.close()
        if slot.process is process:
            slot.process = None
        if not self._stopping:
            self._on_death(slot, process, f"worker pid {process.pid} exited with "
                                          f"{exit_description(code)}{reason}")

    def _on_message(self, process: _Process, msg: dict) -> None:
        op, item_id = msg.get("op"), msg.get("id")
        if op == "done":
            if process.in_flight.pop(item_id, None) is not None:
                self._emit(msg)
            else:
                _log(f"worker pid {process.pid} reported {item_id!r}, which it was not running")
        elif op == "heartbeat":
            if item_id in process.in_flight:
                self._emit(msg)
        elif op in READ_OPS:
            self._emit(dict(msg, reply=lambda frame: self._send_to(process, frame)))
        else:
            _log(f"worker pid {process.pid} sent an unexpected {op!r} frame")

    def _on_death(self, slot: _Slot, process: _Process, message: str) -> None:
        _log(message)
        self._deaths += 1
        orphans, process.in_flight = process.in_flight, {}
        for item_id in orphans:
            self._emit({"op": "done", "id": item_id, "error": {
                "type": "WorkerDied", "message": message, "stack": "", "non_retryable": False}})
        loop = asyncio.get_running_loop()
        if loop.time() - process.started_s >= BACKOFF_RESET_AFTER_S:
            slot.backoff_s = self._backoff_initial_s
        slot.restart = loop.create_task(self._restart(slot))

    async def _restart(self, slot: _Slot) -> None:
        while not self._stopping:
            delay_s, slot.backoff_s = slot.backoff_s, min(slot.backoff_s * 2, self._backoff_max_s)
            await asyncio.sleep(delay_s)
            try:
                await self._spawn(slot)
                self._restarts += 1
                return
            except Exception as exc:  # WorkerStartError, a garbled first frame ...
                _log(f"restarting worker {slot.index} failed, retrying: {exc}")

    # --- events --------------------------------------------------------------------------------
    def _emit(self, msg: dict) -> None:
        try:
            self._on_event(msg)
        except Exception:
            _log(f"on_event raised on {msg.get('op')} {msg.get('id')!r}:\n{traceback.format_exc()}")

    def _emit_soon(self, msg: dict) -> None:
        asyncio.get_running_loop().call_soon(self._emit, msg)
