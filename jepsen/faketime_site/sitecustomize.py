"""Loaded (via PYTHONPATH) by Flow nodes started under libfaketime by the clock nemesis.

Under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1, time.sleep() raises
OSError(EINVAL) (shared/notes/faults.md); a select() with no descriptors sleeps the same
and works. Only time.sleep is replaced: wall-clock reads stay skewed, which is the fault.
"""

import select
import time


def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        select.select([], [], [], left)


time.sleep = _sleep
