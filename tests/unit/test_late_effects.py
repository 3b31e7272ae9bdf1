"""A committed command's effects are acted on even when its proposer stopped waiting
(flow.replica._settle_batch): a client that gave up (its deadline cancelled the handler)
or a proposal that timed out must not drop the dispatch of an eager assignment, or the
workflow task sits assigned to a live supervisor for good (seen in the jepsen suite:
lose-unsynced-one, one queue item never delivered). And the eager credit the settled
proposal gave back is taken again by the late assignment (flow.dispatcher)."""

from __future__ import annotations

import asyncio
import types

from pysyncobj import FAIL_REASON

from coda.flow.dispatcher import Session, ShardDispatcher
from coda.flow.replica import ShardReplica


class FakeReplica:
    shard = 0
    effects_listener = None
    commit_listener = None

    def __init__(self):
        self.committed = types.SimpleNamespace(add=lambda layers: None)


def settle(replica, results) -> None:
    ShardReplica._settle_batch(replica, results, ())


def test_effects_of_a_result_nobody_waits_for_are_still_acted_on():
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        replica = FakeReplica()
        replica.effects_listener = seen.append
        abandoned, waited = loop.create_future(), loop.create_future()
        abandoned.cancel()   # the handler that proposed it was cancelled
        failed = loop.create_future()
        settle(replica, [
            (abandoned, {"ok": {}, "effects": {"closed": ["w1"]}}, FAIL_REASON.SUCCESS),
            (waited, {"ok": {"x": 1}, "effects": {"closed": ["w2"]}}, FAIL_REASON.SUCCESS),
            (failed, None, FAIL_REASON.DISCARDED)])
        assert seen == [{"closed": ["w1"]}, {"closed": ["w2"]}]
        assert await waited == {"ok": {"x": 1}, "effects": {"closed": ["w2"]}}
        assert failed.done() and failed.exception() is not None
    asyncio.run(main())


def test_a_failing_effects_listener_does_not_stop_the_others_settling():
    async def main():
        loop = asyncio.get_running_loop()
        replica = FakeReplica()
        replica.effects_listener = lambda effects: 1 / 0
        future = loop.create_future()
        settle(replica, [(future, {"ok": {}, "effects": {"closed": []}}, FAIL_REASON.SUCCESS)])
        assert await future == {"ok": {}, "effects": {"closed": []}}
    asyncio.run(main())


def test_late_eager_effects_take_back_the_credit_their_settle_returned():
    async def main():
        replica = types.SimpleNamespace(shard=0)
        dispatcher = ShardDispatcher(replica, lease_ms=3000)
        session = Session("s1", ("q",), credit=10)
        dispatcher.sessions["s1"] = session
        reserved = dispatcher.reserve_eager(session, 2)
        assert reserved == 2 and session.credit == 8
        # The proposal timed out: everything reserved comes back ...
        dispatcher.settle_eager(session, "req-1", reserved)
        assert session.credit == 10
        # ... then the command commits and its two assignments are dispatched.
        item = {"kind": "task", "workflow_id": "w", "run_id": "r", "key": "k", "attempt": 1}
        dispatcher.on_effects({"assigned": [["s1", "req-1", [item, dict(item, key="k2")]]]})
        assert session.credit == 8
        assert dispatcher._eager_out["s1"][1] == [item, dict(item, key="k2")]
        assert "req-1" not in dispatcher._eager_used and "req-1" not in dispatcher._eager_settled
        # The usual order (effects, then settle) is unchanged.
        reserved = dispatcher.reserve_eager(session, 1)
        dispatcher.on_effects({"assigned": [["s1", "req-2", [dict(item, key="k3")]]]})
        dispatcher.settle_eager(session, "req-2", reserved)
        assert session.credit == 7 and not dispatcher._eager_used
    asyncio.run(main())


def test_the_dispatch_loops_assignments_are_sent_from_effects_even_after_a_timeout():
    """The dispatch loop's `assign` (not eager) used to send what its answer listed: an
    answer lost to a timeout left the items assigned to a live supervisor and never sent
    (until its session ended). Now the effects send them, late ones included, and the
    credit the timed-out assign gave back is taken again."""
    from coda.errors import Indeterminate
    from coda.flow import commands

    item = {"kind": "task", "workflow_id": "w", "run_id": "r", "key": "k", "attempt": 1}

    async def main():
        proposed = []

        async def propose(data):
            proposed.append(commands.decode(data).body)
            if mode == "commits":  # _settle_batch: the effects first, then the answer
                dispatcher.on_effects({"assigned": [
                    ["s1", proposed[-1]["dispatch_id"], [item]]]})
                return {"assigned": [item]}
            raise Indeterminate("proposal timed out")

        replica = types.SimpleNamespace(shard=0, propose=propose)
        dispatcher = ShardDispatcher(replica, lease_ms=3000)
        sent = []
        dispatcher._send_assigned = lambda session, assigned: sent.append(list(assigned))
        session = Session("s1", ("q",), credit=10)
        dispatcher.sessions["s1"] = session

        mode = "commits"
        session.credit -= 2  # what _pick takes for two items
        await dispatcher._assign(session, [["q", 1], ["q", 2]])
        await asyncio.sleep(0)
        assert sent == [[item]]  # one of the two was still queued
        assert session.credit == 9  # the other one's credit came back
        assert proposed[-1]["dispatch_id"].startswith("assign:")

        mode = "times out"
        session.credit -= 1
        await dispatcher._assign(session, [["q", 3]])
        assert session.credit == 9  # given back: nothing known to be assigned ...
        dispatcher.on_effects({"assigned": [["s1", proposed[-1]["dispatch_id"],
                                             [dict(item, key="k3")]]]})
        await asyncio.sleep(0)
        assert sent[-1] == [dict(item, key="k3")]  # ... until the late commit: sent
        assert session.credit == 8  # and its credit taken again
        assert not dispatcher._eager_used and not dispatcher._eager_settled
    asyncio.run(main())
