"""A shard leader's WatchBroadcasts streams: who follows which broadcast names.

Owned by the shard's dispatcher (flow.dispatcher): `publish` is called with the
`broadcast` effect of each set_broadcast this leader committed; `close_all` when it loses
the leadership, which ends every stream (watchers reconnect to the new leader and say what
they know, so nothing is missed across a leader change). A watcher whose queue fills
(a stalled reader) is cut off the same way instead of holding memory without bound.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from coda.errors import ResourceExhausted
from coda.flow import limits


@dataclass(eq=False)
class Watch:
    names: frozenset
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    open: bool = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.queue.put_nowait(None)


class BroadcastWatchers:
    def __init__(self, shard: int):
        self.shard = shard
        self._by_name: dict[str, set[Watch]] = {}
        self._watches: set[Watch] = set()

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, names) -> Watch:
        if len(self._watches) >= limits.broadcast_watchers_per_shard_max:
            raise ResourceExhausted(f"shard {self.shard} serves "
                                    f"{limits.broadcast_watchers_per_shard_max} broadcast "
                                    "watches, the limit", shard=self.shard)
        watch = Watch(frozenset(names))
        self._watches.add(watch)
        for name in watch.names:
            self._by_name.setdefault(name, set()).add(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        watch.close()
        self._watches.discard(watch)
        for name in watch.names:
            followers = self._by_name.get(name)
            if followers is not None:
                followers.discard(watch)
                if not followers:
                    del self._by_name[name]

    def publish(self, name: str, version: int, found: bool, value, updated_ms: int) -> None:
        for watch in list(self._by_name.get(name, ())):
            if not watch.open:
                continue
            if watch.queue.qsize() >= limits.broadcast_watch_queue_max:
                watch.close()  # it reconnects and re-reads what it missed
                continue
            watch.queue.put_nowait((name, version, found, value, updated_ms))

    def close_all(self) -> None:
        for watch in list(self._watches):
            self.remove(watch)
