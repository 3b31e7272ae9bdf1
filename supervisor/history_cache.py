"""The supervisor's cache of workflow histories, so Flow sends only what is new.

Flow remembers, per session, how much of each run's history it last dispatched; the next
workflow task of that run carries only the events after that (`history_after_event_id`).
This cache supplies the events before, from the last dispatch of the run. It is bounded
by events held (least recently used runs go first); a run it no longer holds, or holds
only in part, is a miss, and the caller fetches the whole history from Flow once.
"""

from __future__ import annotations

from collections import OrderedDict

EVENTS_MAX_DEFAULT = 200_000


class HistoryCache:
    def __init__(self, events_max: int = EVENTS_MAX_DEFAULT):
        self.events_max = events_max
        self._runs: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
        self._events = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._runs)

    def assemble(self, run: tuple[str, str], after_event_id: int,
                 tail: list[dict]) -> list[dict] | None:
        """The whole history: the cached first `after_event_id` events plus `tail`; None
        if the cache can't supply them (the caller fetches the history then)."""
        if after_event_id == 0:
            return list(tail)
        cached = self._runs.get(run)
        if (cached is None or len(cached) < after_event_id
                or cached[after_event_id - 1].get("event_id") != after_event_id):
            self.misses += 1
            return None
        self.hits += 1
        return cached[:after_event_id] + list(tail)

    def peek(self, run: tuple[str, str]) -> list[dict] | None:
        """The cached history of a run as it is (no hit or miss counted)."""
        return self._runs.get(run)

    def put(self, run: tuple[str, str], history: list[dict]) -> None:
        old = self._runs.pop(run, None)
        if old is not None:
            self._events -= len(old)
        if len(history) > self.events_max:
            return
        self._runs[run] = history
        self._events += len(history)
        while self._events > self.events_max:
            _, evicted = self._runs.popitem(last=False)
            self._events -= len(evicted)

    def drop(self, run: tuple[str, str]) -> None:
        old = self._runs.pop(run, None)
        if old is not None:
            self._events -= len(old)
