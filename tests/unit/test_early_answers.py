"""When a shard leader answers committed entries (flow.replica._commit_batch): before
the LMDB commit of their batch, handing the event loop their writes, only if every entry
of the batch is this leader's own write set and the batch is small; otherwise after the
commit, with no writes (LMDB has them). And the loop takes the writes in before it acts
on the answers, so what it reads next includes them."""

from __future__ import annotations

import asyncio
import types

import pytest

from coda.flow import limits
from coda.flow.replica import ShardReplica


class FakeReplica:
    _label = "0"

    def __init__(self, *, layers: int, gapped: bool = False, enabled: bool = True):
        self.order: list = []
        self._results_after_commit = [("future", {"ok": {}}, 0)]
        self._batch_layers = [(10 + i, {("queues", b"k%d" % i): b"v"}) for i in range(layers)]
        self._batch_gapped = gapped
        self._answer_early = enabled
        self.applier = types.SimpleNamespace(
            commit=lambda: self.order.append("lmdb commit") or len(self._batch_layers) or 1,
            applied_index=10 + layers, last_batch_duration_s=0.001)
        self.speculation = types.SimpleNamespace(committed=lambda *args: None)
        self.loop = types.SimpleNamespace(
            call_soon_threadsafe=lambda fn, results, layers, posted_s: self.order.append(
                (fn == "settle" and "answers", len(results), list(layers))))
        self._isLeader = lambda: True
        self._last_log_index = lambda: 10 + layers
        self._settle_batch = "settle"
        self._post_results = types.MethodType(ShardReplica._post_results, self)


def commit(replica: FakeReplica) -> list:
    ShardReplica._commit_batch(replica)
    return replica.order


def test_a_small_batch_of_own_write_sets_is_answered_before_its_lmdb_commit():
    replica = FakeReplica(layers=1)
    layers = list(replica._batch_layers)
    assert commit(replica) == [("answers", 1, layers), "lmdb commit"]
    assert replica._batch_layers == [] and replica._results_after_commit == []


@pytest.mark.parametrize("case", ["gapped", "big", "disabled"])
def test_otherwise_the_answers_wait_for_the_commit_and_carry_no_writes(case):
    replica = FakeReplica(layers=limits.answer_early_batch_entries_max + 1 if case == "big" else 1,
                          gapped=case == "gapped", enabled=case != "disabled")
    assert commit(replica) == ["lmdb commit", ("answers", 1, [])]
    assert replica._batch_gapped is False  # the next batch starts clean


def test_the_loop_takes_the_writes_in_before_acting_on_the_answers():
    seen = []

    class Settling:
        shard = 0
        committed = types.SimpleNamespace(add=lambda layers: seen.append(("add", layers)))
        effects_listener = staticmethod(lambda effects: seen.append(("effects", effects)))
        commit_listener = None
        _watched = {}

    async def main():
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: seen.append(("answer", f.result())))
        ShardReplica._settle_batch(Settling(), [(future, {"ok": {}, "effects": {"x": 1}}, 0)],
                                   [(7, {})])
        await asyncio.sleep(0)
    asyncio.run(main())
    assert seen == [("add", [(7, {})]), ("effects", {"x": 1}), ("answer", {"ok": {}, "effects": {"x": 1}})]
