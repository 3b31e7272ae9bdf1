"""Hand a shard's Raft leadership to a peer before this node stops.

pysyncobj 0.3.17 has `SyncObj.transferLeadership(node=None, callback)` (Raft's TimeoutNow,
syncobj.py ~L415-457): on the leader, it picks the most caught-up connected follower and
sends it `timeout_now`; the follower starts an election at once (~L909-916) and ignores
the old leader's heartbeats meanwhile. It is denied (REQUEST_DENIED) while the target's
match index is behind the leader's last entry, and its success only means "sent".

So: the request is made on the tick thread (transferLeadership reads Raft state that
thread owns; a tick callback is the way in), repeated each tick while denied, re-sent if
the election it triggered did not end our leadership within RESEND_S, and we wait until
this replica follows a leader other than itself, for at most HANDOFF_TIMEOUT_S. Without a
hand-off, followers notice only when their election timeout (1.5-3 s) runs out.

The caller first stops everything on this node that proposes (dispatchers, the gRPC
server), so no proposal is in flight when leadership moves: in-flight ones would be
answered LEADER_CHANGED (an indeterminate outcome) by pysyncobj.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from pysyncobj import FAIL_REASON

log = logging.getLogger(__name__)

# Two election rounds at the fastest: enough for a peer that is up; a peer that is down
# or stopping too is not worth waiting longer for (its followers elect on their own).
HANDOFF_TIMEOUT_S = 3.0
# A TimeoutNow whose election did not remove us within this was lost or failed: resend.
RESEND_S = 0.5
POLL_S = 0.01


class _TransferRequest:
    """A tick callback (tick thread) that asks pysyncobj to transfer while `wanted`."""

    def __init__(self, replica) -> None:
        self.replica = replica
        self.wanted = threading.Event()
        self.sent_at_s: float | None = None

    def __call__(self) -> None:
        if not self.wanted.is_set():
            return
        if not self.replica._isLeader():
            self.wanted.clear()
            return
        self.replica.transferLeadership(None, self._answered)

    def _answered(self, _result, error) -> None:
        # Called synchronously inside transferLeadership. Denied: the target is still
        # catching up; `wanted` stays set, so the next tick asks again.
        if error == FAIL_REASON.SUCCESS:
            self.sent_at_s = time.monotonic()
            self.wanted.clear()


def handed_off(replica) -> bool:
    """This replica follows a known leader that is not itself."""
    leader = replica.leader_raft_address()
    return (not replica._isLeader() and leader is not None
            and leader != replica.cfg.me.raft_address(replica.shard))


async def hand_off(replica, timeout_s: float = HANDOFF_TIMEOUT_S) -> float | None:
    """Move leadership of `replica`'s shard elsewhere if this node leads it.

    Returns the seconds it took, or None if this node did not lead it, or no peer took
    it within the timeout or none is connected (then its followers, if any are up, elect
    a leader after their election timeout)."""
    if not replica._isLeader():
        return None
    started_s = time.monotonic()
    request = _TransferRequest(replica)
    replica.addOnTickCallback(request)
    try:
        request.wanted.set()
        while time.monotonic() - started_s < timeout_s:
            await asyncio.sleep(POLL_S)
            if handed_off(replica):
                took_s = time.monotonic() - started_s
                log.info("shard %d: leadership handed to %s in %.3f s", replica.shard,
                         replica.leader_raft_address(), took_s)
                return took_s
            if not replica.hasQuorum:
                # No peer connected (they are down or stopping too): nobody to hand to.
                break
            sent = request.sent_at_s
            if (replica._isLeader() and not request.wanted.is_set() and sent is not None
                    and time.monotonic() - sent > RESEND_S):
                request.wanted.set()
        log.warning("shard %d: leadership not handed off (after %.3f s; no peer took it); "
                    "followers will elect a leader after their election timeout",
                    replica.shard, time.monotonic() - started_s)
        return None
    finally:
        request.wanted.clear()
        replica.removeOnTickCallback(request)


async def hand_off_all(replicas: list, timeout_s: float = HANDOFF_TIMEOUT_S) -> dict[int, float]:
    """hand_off for every replica at once; {shard: seconds} of those handed off."""
    took = await asyncio.gather(*(hand_off(r, timeout_s) for r in replicas))
    return {r.shard: t for r, t in zip(replicas, took) if t is not None}
