"""The supervisor's reads for its workers: a broadcast cache kept fresh by watches on Flow,
and other workflows' state read through Flow (never cached).

    BroadcastCache    pure: name -> newest known {version, found, value, updated_ms};
                      bounded by names and bytes (least recently read goes first)
    SupervisorReads   the shell: answers workers' `broadcast_get` / `state_get` frames
                      (coda.supervisor.worker_reads has the pipe protocol), fetches what
                      the cache lacks from Flow (linearizable GetBroadcast), and holds one
                      WatchBroadcasts stream per shard that has cached names, pushing each
                      new version to every worker.

Consistency a worker gets: a version at least as new as any this supervisor served
before (versions only move forward in the cache), at most one watch delivery behind
Flow (a push per commit; a broken stream is reopened with the versions known, so the
leader sends what was missed). A read that must see a version at least N (a workflow that
saw N before, on another supervisor) and finds an older one in the cache goes to Flow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import grpc

from coda.api import flow_pb2 as pb
from coda.errors import CodaError
from coda.flow import limits
from coda.flow.sharding import shard_for

log = logging.getLogger(__name__)

CACHE_NAMES_MAX = 10_000
CACHE_BYTES_MAX = 256 * 1024 * 1024
WATCH_BACKOFF_INITIAL_S = 0.05
WATCH_BACKOFF_MAX_S = 1.0
STATE_READS_IN_FLIGHT_MAX = 1000
FETCHES_IN_FLIGHT_MAX = 1000     # distinct broadcast names being read from Flow at once
STATUS_VERSIONS_MAX = 100        # cached versions listed in /health


@dataclass
class Entry:
    version: int
    found: bool
    value: bytes | None
    updated_ms: int = 0

    @property
    def size_bytes(self) -> int:
        return len(self.value or b"") + 64

    def frame(self, name: str) -> dict:
        return {"op": "broadcast", "name": name, "version": self.version, "found": self.found,
                "value": self.value}


class BroadcastCache:
    def __init__(self, names_max: int = CACHE_NAMES_MAX, bytes_max: int = CACHE_BYTES_MAX):
        assert names_max >= 1 and bytes_max >= limits.payload_bytes_max
        self.names_max, self.bytes_max = names_max, bytes_max
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def versions(self, names_max: int) -> dict[str, int]:
        """Cached versions (the most recently read first), without touching the LRU order."""
        newest = list(self._entries.items())[-names_max:]
        return {name: entry.version for name, entry in reversed(newest)}

    def get(self, name: str, min_version: int = 0) -> Entry | None:
        entry = self._entries.get(name)
        if entry is None or entry.version < min_version:
            return None
        self._entries.move_to_end(name)
        return entry

    def put(self, name: str, entry: Entry) -> bool:
        """Keep `entry` if it is newer than what is cached; True if it was kept. Evicts the
        least recently read names past the bounds."""
        current = self._entries.get(name)
        if current is not None and current.version >= entry.version:
            return False
        if current is not None:
            self.size_bytes -= current.size_bytes
        self._entries[name] = entry
        self._entries.move_to_end(name)
        self.size_bytes += entry.size_bytes
        while len(self._entries) > self.names_max or self.size_bytes > self.bytes_max:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= evicted.size_bytes
        return True

    def versions_on(self, shard: int, shard_count: int) -> dict[str, int]:
        return {n: e.version for n, e in self._entries.items()
                if shard_for(n, shard_count) == shard}


class SupervisorReads:
    def __init__(self, *, client_factory, send_all, metrics, shard_count: int,
                 cache: BroadcastCache | None = None):
        self._client_factory = client_factory
        self._send_all = send_all
        self.metrics = metrics
        self.shard_count = shard_count
        self.cache = cache or BroadcastCache()
        self._fetching: dict[str, asyncio.Task] = {}
        self._changed = [asyncio.Event() for _ in range(shard_count)]
        self._watches: list[asyncio.Task] = []   # started with the first cached name
        self._state_reads: set[asyncio.Task] = set()

    async def close(self) -> None:
        tasks = self._watches + list(self._fetching.values()) + list(self._state_reads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> dict:
        return {"names": len(self.cache), "bytes": self.cache.size_bytes,
                "versions": self.cache.versions(STATUS_VERSIONS_MAX)}

    # --- frames from workers -------------------------------------------------------------
    def on_worker_message(self, msg: dict, reply) -> None:
        op = msg.get("op")
        if op == "broadcast_get":
            self._broadcast_get(msg, reply)
        elif op == "state_get":
            if len(self._state_reads) >= STATE_READS_IN_FLIGHT_MAX:
                reply({"op": "state_value", "id": msg.get("id"),
                       "error": f"{STATE_READS_IN_FLIGHT_MAX} state reads in flight"})
                return
            task = asyncio.get_running_loop().create_task(self._state_get(msg, reply))
            self._state_reads.add(task)
            task.add_done_callback(self._state_reads.discard)
        elif op == "stats":
            hits = msg.get("broadcast_hits")
            if isinstance(hits, int) and hits > 0:
                self.metrics.child(self.metrics.broadcast_reads, "worker_cache").inc(hits)

    def _broadcast_get(self, msg: dict, reply) -> None:
        name, min_version = msg.get("name"), msg.get("min_version") or 0
        if not isinstance(name, str) or not isinstance(min_version, int):
            return
        entry = self.cache.get(name, min_version)
        if entry is not None:
            self.metrics.child(self.metrics.broadcast_reads, "supervisor_cache").inc()
            reply(entry.frame(name))
            return
        if name in self._fetching:
            return  # its answer goes to every worker
        if len(self._fetching) >= FETCHES_IN_FLIGHT_MAX:
            reply({"op": "broadcast", "name": name,
                   "error": f"{FETCHES_IN_FLIGHT_MAX} broadcast reads in flight"})
            return
        self._fetching[name] = asyncio.get_running_loop().create_task(self._fetch(name))
        self._fetching[name].add_done_callback(lambda _: self._fetching.pop(name, None))

    async def _fetch(self, name: str) -> None:
        """A miss: one linearizable read in Flow, then every worker gets the answer (the
        one that asked, and the rest for next time), and the name is watched."""
        self.metrics.child(self.metrics.broadcast_reads, "flow").inc()
        try:
            answer = await self._client_factory()._call(
                "GetBroadcast", pb.GetBroadcastRequest(name=name), retry_indeterminate=True,
                workflow_id=name)
        except CodaError as exc:
            log.warning("broadcast %r: read from Flow failed: %s", name, exc.message)
            self._send_all({"op": "broadcast", "name": name, "error": exc.message})
            return
        entry = Entry(answer.version, answer.found, bytes(answer.value) if answer.found else None,
                      answer.updated_ms)
        if not self._watches:
            self._watches = [asyncio.create_task(self._watch(shard), name=f"broadcast-watch-{shard}")
                             for shard in range(self.shard_count)]
        self._update(name, entry, pushed=False)
        self._send_all((self.cache.get(name) or entry).frame(name))  # the newest we have
        self._changed[shard_for(name, self.shard_count)].set()

    async def _state_get(self, msg: dict, reply) -> None:
        frame = {"op": "state_value", "id": msg.get("id")}
        client = self._client_factory()
        try:
            value = await client._call("GetWorkflowState", pb.GetWorkflowStateRequest(
                                           workflow_id=str(msg.get("workflow_id") or ""),
                                           key=str(msg.get("key") or "")),
                                       retry_indeterminate=True,
                                       workflow_id=str(msg.get("workflow_id")))
            frame.update(found=True, value=bytes(value.value))
        except CodaError as exc:
            if exc.code == "NOT_FOUND":
                frame.update(found=False, message=exc.message)
            else:
                frame["error"] = exc.message
        self.metrics.state_reads.inc()
        reply(frame)

    def _update(self, name: str, entry: Entry, *, pushed: bool) -> bool:
        kept = self.cache.put(name, entry)
        if kept and pushed and entry.updated_ms:
            lag_s = max(0.0, time.time() - entry.updated_ms / 1000)
            self.metrics.broadcast_update_lag.observe(lag_s)
        return kept

    # --- watches ---------------------------------------------------------------------------
    async def _watch(self, shard: int) -> None:
        """Follow the cached names of one shard for ever; reopen when the names change or
        the stream breaks (a new leader, a restart), saying which versions we hold."""
        backoff_s = WATCH_BACKOFF_INITIAL_S
        changed = self._changed[shard]
        while True:
            known = self.cache.versions_on(shard, self.shard_count)
            if not known:
                await changed.wait()
                changed.clear()
                continue
            changed.clear()
            try:
                call = await self._client_factory().open_broadcast_watch(shard, known)
                reader = asyncio.ensure_future(self._read_watch(call))
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    call.cancel()
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                if reader.done() and not reader.cancelled() and reader.exception() is None:
                    backoff_s = WATCH_BACKOFF_INITIAL_S
                    continue
            except (grpc.aio.AioRpcError, CodaError) as exc:
                log.debug("shard %d: broadcast watch failed: %s", shard, exc)
            self.metrics.broadcast_watch_reopens.inc()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, WATCH_BACKOFF_MAX_S)

    async def _read_watch(self, call) -> None:
        async for message in call:
            entry = Entry(message.version, message.found,
                          bytes(message.value) if message.found else None, message.updated_ms)
            if self._update(message.name, entry, pushed=True):
                self._send_all(entry.frame(message.name))

