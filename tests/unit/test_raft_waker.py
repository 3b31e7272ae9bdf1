"""The tick thread's wake-up pipe (flow.raft_base, trap 8): a wake-up is never lost.

The race this pins: the proposer sets the pending flag and writes a byte while the tick
thread clears the flag and drains the pipe. Cleared before draining, the drain could
swallow a byte written after the clear, leaving the flag set over an empty pipe: every
later wake() then skipped writing and every proposal waited a whole tick (seen in the
bench as 50 ms per hop on some shards). Real threads, a real pipe, pysyncobj's own poller.
"""

from __future__ import annotations

import sys
import threading
import time

from pysyncobj.poller import PollPoller

from coda.flow.raft_base import DurableSyncObj


class Waker:
    """Just the waker of DurableSyncObj, on pysyncobj's poller."""
    install_waker = DurableSyncObj.install_waker
    wake = DurableSyncObj.wake
    _on_wake = DurableSyncObj._on_wake
    close_waker = DurableSyncObj.close_waker

    def __init__(self):
        self._poller = PollPoller()
        self.install_waker()


def test_a_wake_after_the_last_drain_is_never_lost():
    waker = Waker()
    stop = threading.Event()
    polls = [0]

    def tick_thread():
        while not stop.is_set():
            waker._poller.poll(0.05)
            polls[0] += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows
    ticker = threading.Thread(target=tick_thread, daemon=True)
    ticker.start()
    try:
        deadline = time.monotonic() + 3.0
        wakes = 0
        while time.monotonic() < deadline:
            waker.wake()
            wakes += 1
            # Every so often, prove the wake-up is live: a wake() now must be seen
            # (the flag cleared by the tick thread) well within the poll timeout.
            if wakes % 5000 == 0:
                waker.wake()
                seen_by = time.monotonic() + 1.0
                while waker._wake_pending and time.monotonic() < seen_by:
                    time.sleep(0.0005)
                assert not waker._wake_pending, (
                    f"wake-up lost after {wakes} wakes: the flag is set and nothing will "
                    "ever clear it")
    finally:
        sys.setswitchinterval(old_interval)
        stop.set()
        ticker.join(timeout=5)
        waker.close_waker()
    assert wakes > 10_000 and polls[0] > 100, (wakes, polls[0])
