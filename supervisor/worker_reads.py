"""A worker's reads of what others own: broadcast variables and other workflows' state.

The worker asks its supervisor over the pipe (docs/execution-protocol.md):

    worker → supervisor   {"op": "broadcast_get", "name", "min_version"}
                          {"op": "state_get", "id", "workflow_id", "key"}
                          {"op": "stats", "broadcast_hits": n}      (counts since the last)
    supervisor → worker   {"op": "broadcast", "name", "version", "found", "value"}
                          (an answer, or a new version pushed to every worker)
                          {"op": "state_value", "id", "found", "value", "message"}

Broadcast answers are cached here (bounded, newest version wins), so a read the cache can
serve never leaves the process; the supervisor pushes every new version of the names it
watches to all its workers. State reads are never cached: each one is a linearizable
read in Flow, done by the supervisor.
"""

from __future__ import annotations

import asyncio
import collections
import itertools

from coda.errors import Unavailable

READ_WAIT_S = 15.0
CACHE_NAMES_MAX = 10_000
STATS_INTERVAL_S = 1.0


class WorkerReads:
    def __init__(self, send_nowait, *, names_max: int = CACHE_NAMES_MAX,
                 wait_s: float = READ_WAIT_S):
        self._send = send_nowait
        self._wait_s = wait_s
        self._names_max = names_max
        self._cache: collections.OrderedDict = collections.OrderedDict()  # name -> answer
        self._broadcast_waiters: dict[str, list] = {}    # name -> [(min_version, future)]
        self._state_waiters: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.hits = 0
        self._hits_reported = 0
        self._stats_task: asyncio.Task | None = None

    # --- broadcast variables ------------------------------------------------------------------
    def lookup(self, name: str, min_version: int = 0) -> dict | None:
        answer = self._cache.get(name)
        if answer is None or answer["version"] < min_version:
            return None
        self._cache.move_to_end(name)
        self.hits += 1
        self._report_soon()
        return answer

    async def fetch(self, name: str, min_version: int = 0) -> dict:
        answer = self.lookup(name, min_version)
        if answer is not None:
            return answer
        future = asyncio.get_running_loop().create_future()
        waiters = self._broadcast_waiters.setdefault(name, [])
        if not waiters or min_version > max(v for v, _ in waiters):
            self._send({"op": "broadcast_get", "name": name, "min_version": min_version})
        waiters.append((min_version, future))
        try:
            return await asyncio.wait_for(future, self._wait_s)
        except TimeoutError:
            raise Unavailable(f"the supervisor did not answer a read of broadcast {name!r} "
                              f"within {self._wait_s} s", name=name) from None
        finally:
            left = [(v, f) for v, f in self._broadcast_waiters.get(name, []) if f is not future]
            if left:
                self._broadcast_waiters[name] = left
            else:
                self._broadcast_waiters.pop(name, None)

    def on_broadcast(self, msg: dict) -> None:
        name = msg.get("name")
        if not isinstance(name, str):
            return
        answer = {"found": bool(msg.get("found")), "version": int(msg.get("version") or 0),
                  "value": msg.get("value"), "error": msg.get("error")}
        if answer["error"] is None:
            current = self._cache.get(name)
            if current is None or answer["version"] >= current["version"]:
                self._cache[name] = answer
                self._cache.move_to_end(name)
                while len(self._cache) > self._names_max:
                    self._cache.popitem(last=False)
        for min_version, future in self._broadcast_waiters.get(name, []):
            if future.done():
                continue
            if answer["error"] is not None:
                future.set_exception(Unavailable(f"broadcast {name!r}: {answer['error']}"))
            elif answer["version"] >= min_version:
                future.set_result(answer)

    # --- other workflows' state ---------------------------------------------------------------
    async def read_state(self, workflow_id: str, key: str) -> dict:
        read_id = f"s{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self._state_waiters[read_id] = future
        self._send({"op": "state_get", "id": read_id, "workflow_id": workflow_id, "key": key})
        try:
            return await asyncio.wait_for(future, self._wait_s)
        except TimeoutError:
            raise Unavailable(f"the supervisor did not answer a read of {workflow_id!r} state "
                              f"{key!r} within {self._wait_s} s") from None
        finally:
            self._state_waiters.pop(read_id, None)

    def on_state_value(self, msg: dict) -> None:
        future = self._state_waiters.get(msg.get("id"))
        if future is None or future.done():
            return
        if msg.get("error"):
            future.set_exception(Unavailable(f"state read failed: {msg['error']}"))
        else:
            future.set_result({"found": bool(msg.get("found")), "value": msg.get("value"),
                               "message": msg.get("message")})

    async def answer(self, read) -> dict:
        """The answer to a WorkflowRun's PendingRead."""
        if read.kind == "broadcast":
            return await self.fetch(read.params["name"], read.min_version)
        return await self.read_state(read.params["workflow_id"], read.params["key"])

    # --- stats --------------------------------------------------------------------------------
    def _report_soon(self) -> None:
        if self._stats_task is None or self._stats_task.done():
            try:
                self._stats_task = asyncio.get_running_loop().create_task(self._report())
            except RuntimeError:
                pass  # no loop (a unit test): nothing to report to

    async def _report(self) -> None:
        await asyncio.sleep(STATS_INTERVAL_S)
        hits, self._hits_reported = self.hits - self._hits_reported, self.hits
        if hits:
            self._send({"op": "stats", "broadcast_hits": hits})
