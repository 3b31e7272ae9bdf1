"""Continue-as-new in the state machine (#9), on a real LMDB store with the real runtime
as the worker (test_execution_sm's scripted Sim): one committed command ends a run and
starts the next; a workflow that loops for ever through it keeps bounded storage."""

from __future__ import annotations

import time

import pytest

import coda
from coda.client.sdk import definition_of
from coda.flow import commands, limits, model
from coda.storage import codec, keys
from test_execution_sm import Sim


@coda.workflow(name="looper")
async def looper(i, until):
    coda.context.set_state("i", i)
    if i < until:
        coda.context.continue_as_new({"i": i + 1, "until": until})
    return i


WORKFLOWS = {"looper": definition_of(looper)}


class LoopSim(Sim):
    workflows = WORKFLOWS
    task_types = []

    def entries(self) -> dict[str, int]:
        return self.read(lambda txn: {db: sum(1 for _ in txn.scan(db)) for db in keys.ALL_DBS})


@pytest.fixture
def sim(tmp_path):
    s = LoopSim(tmp_path / "shard")
    s.register()
    yield s
    s.store.close()


def test_continue_as_new_closes_the_run_and_starts_the_next_in_one_command(sim):
    sim.start("loop", "looper", {"i": 0, "until": 2})
    first = sim.record("loop")["run_id"]
    [item] = sim.assign()
    sim.complete(item, {"commands": sim.run_workflow_task(item)})   # one command
    current = sim.record("loop")
    assert current["status"] == model.RUNNING and current["run_id"] != first
    assert current["continued_from"] == first and current["wft"]["state"] == "queued"
    old = sim.read(lambda txn: codec.unpack(txn.get(keys.RUNS, keys.run_key("loop", first))))
    assert old["status"] == model.CONTINUED_AS_NEW and old["continued_as"] == current["run_id"]
    closing = sim.read(lambda txn: [codec.unpack(v) for _, v in txn.scan(
        keys.HISTORY, prefix=keys.history_prefix("loop", first))])[-1]
    assert closing == dict(closing, type="WorkflowExecutionContinuedAsNew",
                           new_run_id=current["run_id"])
    [started] = sim.history("loop")
    assert started["continued_from"] == first and codec.unpack(started["input"]) == {
        "i": 1, "until": 2}
    while sim.step():
        pass
    assert sim.record("loop")["status"] == model.COMPLETED
    assert codec.unpack(sim.record("loop")["result"]) == 2
    # A retry of the original start gets its first answer; nothing new starts.
    again = sim.apply(commands.start_workflow(
        request_id="start-loop", time_ms=sim.time_ms, workflow_id="loop",
        workflow_type="looper", input_payload=codec.pack({}), run_id="other",
        reuse_policy=model.ALLOW_DUPLICATE))
    assert again == {"run_id": first, "started": True}
    assert sim.record("loop")["status"] == model.COMPLETED


def test_ten_thousand_iterations_keep_storage_bounded(sim):
    iterations = 10_000
    sim.start("forever", "looper", {"i": 0, "until": iterations})
    began = time.monotonic()
    sizes = {}
    for n in range(1, iterations + 2):  # runs i = 0 .. iterations
        assert sim.step() == 1
        sim.time_ms += 1
        if n in (1_000, iterations):
            sizes[n] = sim.entries()
    record = sim.record("forever")
    assert record["status"] == model.COMPLETED and codec.unpack(record["result"]) == iterations
    # The dedup table of request ids (one per completion) has bounds of its own: a 24 h
    # window and request_dedup_entries_max entries. No other table grows at all.
    for n in sizes:
        assert sizes[n].pop("requests") == sizes[n].pop("requests_by_time") == n + 1
        assert n + 1 <= limits.request_dedup_entries_max
    assert sizes[1_000] == sizes[iterations], sizes
    assert sizes[iterations]["runs"] == limits.closed_runs_per_workflow_max
    print(f"{iterations} continue-as-new iterations in {time.monotonic() - began:.1f} s; "
          f"entries {sizes[iterations]}")
