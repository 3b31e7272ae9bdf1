"""What a running task can ask about itself, and its heartbeats (the worker sets this up).

    info = current_task()        # TaskInfo, or None outside a task
    heartbeat({"done": 120})     # tell Flow the task is alive (and where it got to)

The worker (coda.supervisor.worker) runs each task inside a `TaskScope` held by a
contextvar: async tasks see it through their asyncio task's context, sync tasks through
the context copied into their executor thread. `heartbeat` works from both: it hands the
details to the worker's event loop, which sends at most one frame per task every
HEARTBEAT_INTERVAL_MIN_S (the latest details win; Flow needs liveness, not every step).
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass

from coda.errors import InvalidArgument
from coda.storage import codec

# One heartbeat frame per task per this many seconds at most; the details of calls in
# between are not lost, the latest of them goes out at the end of the interval.
HEARTBEAT_INTERVAL_MIN_S = 0.5

OUTSIDE_TASK_HINT = ("is only usable inside a running @coda.task (on a worker); workflow code "
                     "has coda.context.spawn_task and friends instead")


@dataclass(frozen=True)
class TaskInfo:
    workflow_id: str
    run_id: str
    key: str                  # the task's key in its workflow (cache_key based or positional)
    attempt: int              # 1 for the first attempt
    idempotency_key: str      # stable across attempts and replays: hand it to external services
    heartbeat_details: object  # what the last attempt passed to heartbeat() (decoded), or None


class TaskScope:
    """One running task as the worker sees it: its info and its heartbeat throttle.

    `send(msg)` must be called on the worker's loop thread; heartbeat() may be called from
    any thread, so everything here that touches the loop goes through call_soon_threadsafe.
    """

    def __init__(self, info: TaskInfo, item_id: str, *, loop, send, payload_bytes_max: int):
        self.info = info
        self.item_id = item_id
        self.payload_bytes_max = payload_bytes_max
        self._loop = loop
        self._loop_thread = threading.get_ident()  # built on the loop thread
        self._send = send
        self._latest: bytes | None = None
        self._last_sent_s = float("-inf")
        self._timer = None
        self._closed = False

    def heartbeat(self, details_bytes: bytes) -> None:
        if threading.get_ident() == self._loop_thread:
            self._record(details_bytes)
            return
        try:
            self._loop.call_soon_threadsafe(self._record, details_bytes)
        except RuntimeError:
            pass  # the loop is closed: the worker is exiting, nobody to tell

    def close(self) -> None:
        """The task is over: a heartbeat still waiting for its interval is dropped."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _record(self, details_bytes: bytes) -> None:
        if self._closed:
            return
        self._latest = details_bytes
        if self._timer is not None:
            return  # a send is already due; it will carry these details
        wait_s = self._last_sent_s + HEARTBEAT_INTERVAL_MIN_S - self._loop.time()
        if wait_s <= 0:
            self._flush()
        else:
            self._timer = self._loop.call_later(wait_s, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._last_sent_s = self._loop.time()
        self._send({"op": "heartbeat", "id": self.item_id, "details": self._latest})


_current: contextvars.ContextVar[TaskScope] = contextvars.ContextVar("coda_task_scope")


def enter(scope: TaskScope) -> contextvars.Token:
    """Worker side: make `scope` the current task of this context."""
    return _current.set(scope)


def current_task() -> TaskInfo | None:
    """The running task's info, or None when not called from inside a task."""
    scope = _current.get(None)
    return scope.info if scope is not None else None


def _scope(what: str) -> TaskScope:
    scope = _current.get(None)
    if scope is None:
        raise InvalidArgument(f"coda.context.{what}() {OUTSIDE_TASK_HINT}")
    return scope


def heartbeat(details=None) -> None:
    """Report that the running task is alive, with optional msgpack-encodable `details`.

    A retried attempt finds the last details in `current_task().heartbeat_details`.
    Raises InvalidArgument outside a task, PayloadError for details that can't be sent.
    """
    scope = _scope("heartbeat")
    data = codec.encode_payload(details, what="heartbeat details",
                                limit_bytes=scope.payload_bytes_max)
    scope.heartbeat(data)


def idempotency_key() -> str:
    """The running task's idempotency key: stable across its attempts and replays."""
    return _scope("idempotency_key").info.idempotency_key


# --- broadcast variables in tasks ---------------------------------------------------------
# Set by the worker: an object with `lookup(name, min_version) -> answer | None` (its
# cache, loop thread only) and `async fetch(name, min_version) -> answer` (asks the
# supervisor), where an answer is {"found", "version", "value": msgpack bytes}.
_broadcast_reader = None
BROADCAST_SYNC_WAIT_S = 30.0


def set_broadcast_reader(reader) -> None:
    global _broadcast_reader
    _broadcast_reader = reader


def broadcast_value(name: str, answer: dict, default):
    from coda.client.runtime_state import MISSING
    from coda.errors import NotFound
    if answer.get("found"):
        return codec.unpack(answer["value"])
    if default is not MISSING:
        return default
    raise NotFound(f"broadcast variable {name!r} is not set", name=name)


def get_broadcast(name: str, default):
    """An awaitable in an async task; the value itself in a sync task (blocking)."""
    scope = _current.get(None)
    reader = _broadcast_reader
    if scope is None or reader is None:
        raise InvalidArgument(f"coda.context.get_broadcast() is only usable inside a workflow "
                              f"or a task running on a worker")
    if threading.get_ident() == scope._loop_thread:
        async def read():
            return broadcast_value(name, await reader.fetch(name, 0), default)
        return read()
    import asyncio
    answer = asyncio.run_coroutine_threadsafe(reader.fetch(name, 0), scope._loop).result(
        BROADCAST_SYNC_WAIT_S)
    return broadcast_value(name, answer, default)
