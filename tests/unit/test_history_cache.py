"""The supervisor's history cache: whole histories from a cached head plus a new tail."""

from coda.supervisor.history_cache import HistoryCache


def events(first: int, last: int) -> list[dict]:
    return [{"event_id": n, "type": "X"} for n in range(first, last + 1)]


def test_a_tail_extends_the_cached_head():
    cache = HistoryCache()
    assert cache.assemble(("w", "r"), 0, events(1, 3)) == events(1, 3)
    cache.put(("w", "r"), events(1, 3))
    assert cache.assemble(("w", "r"), 3, events(4, 6)) == events(1, 6)
    assert (cache.hits, cache.misses) == (1, 0)


def test_a_head_the_cache_lacks_is_a_miss_not_a_wrong_history():
    cache = HistoryCache()
    assert cache.assemble(("w", "r"), 3, events(4, 5)) is None       # never seen
    cache.put(("w", "r"), events(1, 2))
    assert cache.assemble(("w", "r"), 3, events(4, 5)) is None       # holds too little
    cache.put(("w", "r"), events(2, 4))
    assert cache.assemble(("w", "r"), 3, events(4, 5)) is None       # not events 1..3
    cache.put(("w", "r"), events(1, 5))
    assert cache.assemble(("w", "r"), 3, events(4, 4)) == events(1, 4)  # a shorter head is fine
    assert cache.misses == 3


def test_it_holds_at_most_its_event_budget_evicting_the_least_recently_used():
    cache = HistoryCache(events_max=10)
    cache.put(("a", "r"), events(1, 4))
    cache.put(("b", "r"), events(1, 4))
    cache.assemble(("a", "r"), 4, [])        # a is used again; b is now the oldest
    cache.put(("a", "r"), events(1, 4))
    cache.put(("c", "r"), events(1, 4))      # 12 > 10: b goes
    assert cache.assemble(("b", "r"), 4, []) is None
    assert cache.assemble(("a", "r"), 4, []) == events(1, 4)
    cache.put(("huge", "r"), events(1, 11))  # over the whole budget: not kept
    assert cache.assemble(("huge", "r"), 11, []) is None
