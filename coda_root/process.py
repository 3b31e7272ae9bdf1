"""Interpreter settings for Coda's long-running processes (nodes, supervisors, workers).

`tune_gc()`: CPython's cyclic collector runs a young-generation pass every 700 net
container allocations. A Flow node decodes and builds thousands of msgpack lists and
dicts per second, so under load the collector ran hundreds of times a second
(`gc_collect_main` was ~4 % of a leader's native profile samples under W-seq), almost
always finding nothing: Coda's hot paths make few reference cycles. A larger first
threshold makes each pass rarer; `gc.freeze()` moves what start-up built (modules,
config, protobuf descriptors) out of every later pass. Memory stays bounded: a cycle
waits at most one (larger) young generation before it is collected.

CODA_GC_THRESHOLD="a,b,c" overrides the thresholds (for measuring; "700,10,10" is
CPython's default).
"""

from __future__ import annotations

import gc
import os

GC_THRESHOLDS = (20_000, 20, 20)


def gc_thresholds() -> tuple[int, int, int]:
    raw = os.environ.get("CODA_GC_THRESHOLD")
    if not raw:
        return GC_THRESHOLDS
    try:
        a, b, c = (int(x) for x in raw.split(","))
    except ValueError:
        raise ValueError(f"CODA_GC_THRESHOLD must be three integers 'a,b,c', got {raw!r}") from None
    if min(a, b, c) < 1:
        raise ValueError(f"CODA_GC_THRESHOLD values must be >= 1, got {raw!r}")
    return a, b, c


def tune_gc() -> None:
    """Collect what start-up left, freeze it, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc_thresholds())
