"""Speculative dispatch (flow.speculation, flow.replica._on_entries_sent,
flow.dispatcher.on_appended): a new run's first workflow task, assigned eagerly by its
start, is sent when the start is appended, built from the leader's pending view; it must
be the very message its commit would have built, only for what a start created (never a
task: tasks have side effects), and the commit must then neither send it again nor lose
it when the session that got it is gone."""

from __future__ import annotations

import asyncio
import struct
import types

from pysyncobj import pickle as raft_pickle
import test_execution_sm as scripted  # its Sim, not imported by name: one entry form here

from coda.flow import commands, limits, model
from coda.flow.applier import Applier
from coda.flow.dispatcher import Session, ShardDispatcher
from coda.flow.dispatches import dispatch_of
from coda.flow.speculation import Speculation, first_workflow_tasks
from coda.storage import codec, keys

TERM = 3
_REGULAR = struct.pack("B", 0)


def start_data(wid: str, eager_to: str | None = "s1") -> bytes:
    return commands.start_workflow(
        request_id=f"start-{wid}", time_ms=scripted.T0, workflow_id=wid, workflow_type="twice",
        input_payload=codec.pack({"n": 1}), run_id=f"run-{wid}",
        reuse_policy=model.ALLOW_DUPLICATE, allow_undeclared_type=False,
        eager={"supervisor_id": eager_to, "items": 1} if eager_to else None)


def entry_of(data: bytes) -> bytes:
    return _REGULAR + raft_pickle.dumps((0, (data,)))


def leader(tmp_path) -> tuple[scripted.Sim, Speculation]:
    sim = scripted.Sim(tmp_path / "shard")
    sim.register()
    spec = Speculation(sim.store, 0)
    spec.on_become_leader([])
    return sim, spec


def test_a_start_s_first_workflow_task_is_built_before_its_commit_as_the_commit_builds_it(
        tmp_path):
    sim, spec = leader(tmp_path)
    index = sim.index + 1
    entry = spec.transform(entry_of(start_data("w1")), index, TERM)
    groups, txn = spec.take_first_tasks()
    ((sid, request_id, items),) = groups
    assert (sid, request_id) == ("s1", "start-w1") and [i["kind"] for i in items] == ["wft"]
    early = dispatch_of(txn, items[0]).SerializeToString()
    spec.end_tick()
    # Nothing of the run was in LMDB: the message came from the pending view alone.
    assert sim.read(lambda t: t.get(keys.HISTORY, keys.history_key("w1", "run-w1", 1))) is None
    applier = Applier(sim.store)
    term, write_items, _ = spec.own_write_set(index, entry)
    applier.apply_own_write_set(index, term, write_items)
    applier.commit()
    committed = sim.read(lambda t: dispatch_of(t, items[0]).SerializeToString())
    assert early == committed
    assert spec.take_first_tasks() == ([], None)  # handed over once


def test_only_a_started_run_s_own_workflow_tasks_are_sent_early():
    item = {"kind": "wft", "run_id": "r1"}
    start = {"ok": {"run_id": "r1", "started": True},
             "effects": {"assigned": [["s1", "q1", [item]]]}}
    assert first_workflow_tasks(start) == [["s1", "q1", [item]]]
    # A retried start (answered from the dedup table: no effects), another run's task,
    # a task (side effects), a completion's assignments: none.
    assert first_workflow_tasks({"ok": {"run_id": "r1", "started": False}}) == []
    other = dict(start, effects={"assigned": [["s1", "q1", [dict(item, run_id="r0")]]]})
    assert first_workflow_tasks(other) == []
    task = dict(start, effects={"assigned": [["s1", "q1", [dict(item, kind="task")]]]})
    assert first_workflow_tasks(task) == []
    assert first_workflow_tasks({"ok": {"accepted": True}, "effects": start["effects"]}) == []
    assert first_workflow_tasks({"error": {"code": "X"}}) == []
    assert first_workflow_tasks({"batch": [start, task, start]}) == [["s1", "q1", [item]]] * 2


def test_none_from_a_big_batch_without_eager_or_once_speculation_stopped(tmp_path):
    sim, spec = leader(tmp_path)
    n = limits.dispatch_early_batch_commands_max + 1
    spec.transform(entry_of(commands.encode_batch([start_data(f"b{i}") for i in range(n)])),
                   sim.index + 1, TERM)
    assert spec.take_first_tasks() == ([], None)
    spec.transform(entry_of(start_data("plain", eager_to=None)), sim.index + 2, TERM)
    assert spec.take_first_tasks() == ([], None)
    spec.transform(entry_of(start_data("w2")), sim.index + 3, TERM)
    spec.on_step_down()  # its pending view is gone: the entry commits or not as it is
    assert spec.take_first_tasks() == ([], None)
    spec.end_tick()


def dispatcher_with(*sessions: Session) -> tuple[ShardDispatcher, list]:
    dispatcher = ShardDispatcher(types.SimpleNamespace(shard=0), lease_ms=3000)
    dispatcher.active = True
    for session in sessions:
        dispatcher.sessions[session.supervisor_id] = session
    return dispatcher


WFT = {"kind": "wft", "workflow_id": "w", "run_id": "r", "key": "", "attempt": 1,
       "history_length": 1}


def sent(session: Session) -> list:
    out = []
    while not session.outbox.empty():
        out.append(session.outbox.get_nowait())
    return out


def test_the_commit_of_a_start_sent_early_sends_nothing_more_and_notes_its_history():
    async def main():
        session = Session("s1", ("q",), credit=10)
        dispatcher = dispatcher_with(session)
        reserved = dispatcher.reserve_eager(session, 1)
        dispatcher.on_appended([("s1", "req", [WFT], [dispatch_of_stub("w")])])
        assert [m.dispatches.items[0].workflow_id for m in sent(session)] == ["w"]
        dispatcher.on_effects({"assigned": [["s1", "req", [WFT]]]})
        await asyncio.sleep(0)
        assert sent(session) == [] and dispatcher._eager_out == {}
        assert session.history_sent[("w", "r")] == 1  # the run's next task sends only news
        dispatcher.settle_eager(session, "req", reserved)
        assert session.credit == 9  # one slot runs it, the rest came back
        assert dispatcher._sent_early == {}
    asyncio.run(main())


def test_a_session_replaced_before_the_commit_gets_it_from_the_commit():
    async def main():
        old = Session("s1", ("q",), credit=10)
        dispatcher = dispatcher_with(old)
        dispatcher.on_appended([("s1", "req", [WFT], [dispatch_of_stub("w")])])
        assert len(sent(old)) == 1
        new = Session("s1", ("q",), credit=10)  # the supervisor reconnected
        dispatcher.sessions["s1"] = new
        dispatcher.on_effects({"assigned": [["s1", "req", [WFT]]]})
        assert dispatcher._eager_out["s1"] == (new, [WFT])  # sent at the commit, as before
    asyncio.run(main())


def test_not_sent_early_to_a_closed_session_a_known_run_or_when_not_leading():
    async def main():
        closed = Session("s1", ("q",), credit=10)
        closed.open = False
        knows = Session("s2", ("q",), credit=10)
        knows.history_sent[("w", "r")] = 1
        dispatcher = dispatcher_with(closed, knows)
        dispatcher.on_appended([("s1", "a", [WFT], [dispatch_of_stub("w")]),
                                ("s2", "b", [WFT], [dispatch_of_stub("w")]),
                                ("s3", "c", [WFT], [dispatch_of_stub("w")])])
        assert sent(closed) == [] and sent(knows) == [] and dispatcher._sent_early == {}
        fresh = Session("s1", ("q",), credit=10)
        dispatcher.sessions["s1"] = fresh
        dispatcher.active = False
        dispatcher.on_appended([("s1", "d", [WFT], [dispatch_of_stub("w")])])
        assert sent(fresh) == []
    asyncio.run(main())


def test_starts_that_never_commit_are_remembered_within_a_bound(monkeypatch):
    async def main():
        monkeypatch.setattr(limits, "dispatched_early_remembered_max", 3)
        session = Session("s1", ("q",), credit=100)
        dispatcher = dispatcher_with(session)
        for i in range(5):
            item = dict(WFT, run_id=f"r{i}")
            dispatcher.on_appended([("s1", f"req{i}", [item], [dispatch_of_stub("w")])])
        assert list(dispatcher._sent_early) == ["req2", "req3", "req4"]
    asyncio.run(main())


def dispatch_of_stub(wid: str):
    from coda.api import flow_pb2 as pb
    return pb.Dispatch(workflow_id=wid, run_id="r", type_name="twice", attempt=1)
