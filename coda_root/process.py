"""Interpreter settings for Coda's long-running processes (nodes, supervisors, workers).

`tune_process()` does both of these, once, at start-up.

`tune_gc()`: CPython's cyclic collector runs a young-generation pass every 700 net
container allocations. A Flow node decodes and builds thousands of msgpack lists and
dicts per second, so under load the collector ran hundreds of times a second
(`gc_collect_main` was ~9 % of the nodes' native profile samples under W-seq), almost
always finding nothing: Coda's hot paths make few reference cycles. A larger first
threshold makes each pass rarer; `gc.freeze()` moves what start-up built (modules,
config, protobuf descriptors) out of every later pass. Memory stays bounded: a cycle
waits at most one (larger) young generation before it is collected.

CODA_GC_THRESHOLD="a,b,c" overrides the thresholds (for measuring; "700,10,10" is
CPython's default).

`tune_malloc()`: glibc serves an allocation over its mmap threshold (128 KiB at first)
with a fresh mmap, and every page of it faults when first written. A Raft append of up
to 256 KiB is such a buffer several times over (received, decrypted, unpickled): opening
one 260 KB frame took 211 us, 18 us with the threshold raised (most of it page faults,
holding the GIL). The threshold is fixed at 4 MiB, and the heap top is trimmed only past
32 MiB free so the same pages serve the next frame. Other C libraries: nothing changes.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

GC_THRESHOLDS = (20_000, 20, 20)
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3

log = logging.getLogger(__name__)


def tune_process() -> None:
    tune_gc()
    tune_malloc()


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


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
          and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not ok:
        log.warning("mallopt refused the mmap/trim thresholds; large buffers stay mmapped")
    return ok
