"""A Raft entry carrying several commands (flow.replica batches one event-loop turn).

The applier must treat each command of a batch exactly as if it were its own entry: its
own child transaction (a refused command leaves no writes, the others stay), its own
result in order, the same state as applying them one entry each. Real LMDB.
"""

from __future__ import annotations

import pytest

from coda.flow import commands, model
from coda.flow.applier import Applier
from coda.storage.env import LmdbOptions, ShardStore

T0 = 1_700_000_000_000
REUSE = model.ALLOW_DUPLICATE


def start(workflow_id: str, request_id: str) -> bytes:
    return commands.start_workflow(
        request_id=request_id, time_ms=T0, workflow_id=workflow_id, workflow_type="t",
        run_id=f"run-{workflow_id}-{request_id}", input_payload=b"\x80",
        reuse_policy=REUSE, allow_undeclared_type=True)


@pytest.fixture
def applier(tmp_path):
    store = ShardStore(str(tmp_path / "lmdb"), LmdbOptions(sync=False, metasync=False))
    applier = Applier(store)
    yield applier
    applier.commit()  # an open write batch holds the store's lock: close would wait on it
    store.close()


def test_split_batch_tells_a_batch_from_a_single_command():
    one, two = start("a", "r1"), start("b", "r2")
    assert commands.split_batch(one) is None
    assert commands.split_batch(commands.encode_batch([one, two])) == [one, two]


def test_each_command_of_a_batch_has_its_own_result_and_rollback(applier, tmp_path):
    first, dup, other = start("a", "r1"), start("a", "r2"), start("b", "r3")
    result = applier.apply(1, commands.encode_batch([first, dup, other]))
    applier.commit()
    results = result["batch"]
    assert len(results) == 3
    assert "ok" in results[0] and "ok" in results[2]
    assert results[1]["error"]["code"] == "ALREADY_EXISTS", results[1]
    assert applier.store.applied_index() == 1

    # The same commands as one entry each give the same state, byte for byte.
    single = ShardStore(str(tmp_path / "single"), LmdbOptions(sync=False, metasync=False))
    try:
        one_by_one = Applier(single)
        answers = [one_by_one.apply(i, d) for i, d in enumerate([first, dup, other], 1)]
        one_by_one.commit()
        assert [sorted(a) for a in answers] == [sorted(r) for r in results]
        # applied index differs (3 entries against 1): compare everything else
        assert _records(single) == _records(applier.store)
    finally:
        single.close()


def test_a_malformed_batch_is_an_error_never_an_exception(applier):
    bad = commands._BATCH_PREFIX + b"\xc1"  # the prefix, then a byte msgpack never uses
    result = applier.apply(1, bad)
    assert result["error"]["code"] == "INVALID_ARGUMENT", result
    too_many = commands.codec.pack([commands.VERSION, commands.BATCH, []])
    assert applier.apply(2, too_many)["error"]["code"] == "INVALID_ARGUMENT"
    assert applier.applied_index == 2


def _records(store: ShardStore) -> dict:
    from coda.storage import keys
    out = {}
    with store.read() as txn:
        for name in keys.ALL_DBS:
            for key, value in txn.scan(name):
                if name == keys.META and key == keys.META_APPLIED_INDEX:
                    continue
                out[(name, key)] = value
    return out
