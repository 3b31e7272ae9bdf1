"""Pending writes layered over LMDB (storage.overlay, and the committed view of
storage.committed): reads must equal LMDB's own reads
after every write were made. Real LMDB; the write sequences come from hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coda.storage import keys
from coda.storage.env import LmdbOptions, ShardStore
from coda.storage.committed import CommittedView
from coda.storage.overlay import OverlayTxn, PendingWrites

DBS = (keys.QUEUES, keys.HISTORY)
KEYS = st.sampled_from([b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"b\xff", b"c", b"\xff"])
WRITE = st.tuples(st.sampled_from(DBS), KEYS, st.one_of(st.none(), st.binary(max_size=3)))
ENTRIES = st.lists(st.lists(WRITE, max_size=6), min_size=1, max_size=12)
PREFIXES = (b"", b"a", b"a\x00", b"b", b"\xff")


@pytest.fixture
def stores(tmp_path):
    opened, made = [], [0]

    def make(name):
        made[0] += 1
        name = name or f"s{made[0]}"
        store = ShardStore(str(tmp_path / name), LmdbOptions(sync=False, metasync=False))
        opened.append(store)
        if len(opened) > 8:  # hypothesis runs many examples in one test: keep few open
            opened.pop(0).close()
        return store
    yield make
    for store in opened:
        store.close()


def _write(store: ShardStore, entries, first_index: int) -> None:
    batch = store.begin_batch()
    for entry in entries:
        batch.write([[db, key, value] for db, key, value in entry])
    batch.commit(first_index + len(entries) - 1)


def _lmdb_and_pending(stores, entries, split: int):
    """A store holding every entry, one holding [0, split), and the rest as pending
    layers (index from 1, as the entries' Raft indexes)."""
    full, partial = stores(None), stores(None)
    _write(full, entries, 1)
    if split:
        _write(partial, entries[:split], 1)
    pending = PendingWrites()
    for index, entry in enumerate(entries[split:], start=split + 1):
        pending.push(index, {(db, key): value for db, key, value in entry})
    return full, partial, pending


def _view(txn, reverse: bool = False) -> dict:
    """Every read the state machine makes, over the test's key space (and the reverse
    scans listings make, for reads of committed state)."""
    out = {}
    for db in DBS:
        for key in (b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"b\xff", b"c", b"\xff", b"zz"):
            out[("get", db, key)] = txn.get(db, key)
        for prefix in PREFIXES:
            for start in (b"", b"a\x00", b"b"):
                out[("scan", db, prefix, start)] = list(txn.scan(db, prefix=prefix, start=start))
            for before in (None, b"a\x00", b"ab", b"b\xff", b"c") if reverse else ():
                out[("scan_reverse", db, prefix, before)] = list(
                    txn.scan_reverse(db, prefix=prefix, before=before))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, split=st.integers(min_value=0, max_value=12),
       dropped=st.integers(min_value=0, max_value=12))
def test_pending_writes_over_lmdb_read_as_lmdb_with_them_made(stores, entries, split, dropped):
    """Entries [0, split) are in LMDB, the rest pending; then some of those are made in
    LMDB and dropped from pending. At each point, reads match LMDB holding them all."""
    split = min(split, len(entries))
    expected, layered, pending = _lmdb_and_pending(stores, entries, split)
    with expected.read() as want_txn:
        want = _view(want_txn)
    with layered.read() as base:
        assert _view(OverlayTxn(base, pending)) == want

    made = min(split + dropped, len(entries))
    if made > split:
        _write(layered, entries[split:made], split + 1)
        pending.drop_through(made)
    with layered.read() as base:
        assert _view(OverlayTxn(base, pending)) == want
    pending.drop_through(len(entries))
    assert len(pending) == 0 and pending.keys_from(DBS[0], b"", b"") is not None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, split=st.integers(min_value=0, max_value=12),
       lagging=st.integers(min_value=0, max_value=12))
def test_a_committed_view_reads_as_lmdb_with_every_committed_entry_made(
        stores, entries, split, lagging):
    """A leader's event loop is told of entries [split, end) before LMDB holds them; LMDB
    holds [0, split), then catches up, possibly past layers the view was not yet given
    (`lagging` of them arrive late). Reads through the view always see every entry the
    view was given, and never an older value over a newer one LMDB holds."""
    split = min(split, len(entries))
    expected, store = stores(None), stores(None)
    _write(expected, entries, 1)
    if split:
        _write(store, entries[:split], 1)
    layers = [(index, {(db, key): value for db, key, value in entry})
              for index, entry in enumerate(entries, start=1)]
    view = CommittedView(store)
    view.add(layers[max(0, split - 2):])  # some it holds already: dropped when it reads
    with expected.read() as want_txn:
        want = _view(want_txn, reverse=True)
    with view.read() as txn:
        assert _view(txn, reverse=True) == want
    # LMDB catches up while the view holds layers of only part of what it made.
    if split < len(entries):
        _write(store, entries[split:], split + 1)
    late = CommittedView(store)
    late.add(layers[:max(0, len(entries) - lagging)])
    with late.read() as txn:
        assert _view(txn, reverse=True) == want
    assert len(late) == 0  # LMDB holds them all: every layer dropped on the read


def test_a_committed_view_refuses_writes(stores):
    store = stores("s")
    _write(store, [[(keys.QUEUES, b"a", b"lmdb")]], 1)
    view = CommittedView(store)
    view.add([(2, {(keys.QUEUES, b"b"): b"layer"})])
    with view.read() as txn:
        assert list(txn.scan_reverse(keys.QUEUES)) == [(b"b", b"layer"), (b"a", b"lmdb")]
        with pytest.raises(TypeError):
            txn.put(keys.QUEUES, b"c", b"x")
        with pytest.raises(TypeError):
            txn.delete(keys.QUEUES, b"a")


OPS = st.lists(st.tuples(st.sampled_from(("put", "delete")), st.sampled_from(DBS), KEYS,
                         st.binary(max_size=3)), max_size=20)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, split=st.integers(min_value=0, max_value=12), ops=OPS)
def test_a_commands_writes_made_in_lmdb_equal_running_it_on_lmdb(stores, entries, split, ops):
    """A command's puts and deletes through an OverlayTxn (over LMDB holding entries
    [0, split) and the rest pending): each delete answers what LMDB's would, and its
    write set, made after the entries, leaves LMDB as running the ops on LMDB does."""
    split = min(split, len(entries))
    direct, layered, pending = _lmdb_and_pending(stores, entries, split)
    batch = direct.begin_batch()
    with batch.command() as lmdb_txn:
        want = [lmdb_txn.put(db, key, value) if op == "put" else lmdb_txn.delete(db, key)
                for op, db, key, value in ops]
    batch.commit(len(entries) + 1)
    with layered.read() as base:
        txn = OverlayTxn(base, pending)
        got = [txn.put(db, key, value) if op == "put" else txn.delete(db, key)
               for op, db, key, value in ops]
        writes = dict(txn.writes)
    assert got == want
    _write(layered, entries[split:], split + 1)
    batch = layered.begin_batch()
    batch.write([[db, key, value] for (db, key), value in writes.items()])
    batch.commit(len(entries) + 1)
    assert layered.digest() == direct.digest()


def test_a_commands_own_writes_come_first_and_deletes_hide(stores):
    store = stores("s")
    _write(store, [[(keys.QUEUES, b"a", b"lmdb"), (keys.QUEUES, b"b", b"lmdb")]], 1)
    pending = PendingWrites()
    pending.push(2, {(keys.QUEUES, b"a"): b"pending"})
    with store.read() as base:
        txn = OverlayTxn(base, pending)
        assert txn.get(keys.QUEUES, b"a") == b"pending"
        assert txn.delete(keys.QUEUES, b"b") is True
        assert txn.delete(keys.QUEUES, b"nope") is False
        txn.put(keys.QUEUES, b"c", b"own")
        assert list(txn.scan(keys.QUEUES)) == [(b"a", b"pending"), (b"c", b"own")]
        assert txn.writes == {(keys.QUEUES, b"b"): None, (keys.QUEUES, b"nope"): None,
                              (keys.QUEUES, b"c"): b"own"}
        with pytest.raises(ValueError):
            txn.put(keys.QUEUES, b"x" * 512, b"v")  # LMDB would refuse it at commit
        with pytest.raises(TypeError):
            txn.put(keys.QUEUES, b"k", "not bytes")


def test_dropping_a_layer_keeps_a_later_layers_write_of_the_same_key():
    pending = PendingWrites()
    pending.push(1, {(keys.QUEUES, b"k"): b"one"})
    pending.push(2, {(keys.QUEUES, b"k"): b"two"})
    pending.drop_through(1)
    assert pending.lookup(keys.QUEUES, b"k") == (True, b"two")
    assert list(pending.keys_from(keys.QUEUES, b"", b"")) == [b"k"]
    pending.drop_through(2)
    assert pending.lookup(keys.QUEUES, b"k") == (False, None)
    assert list(pending.keys_from(keys.QUEUES, b"", b"")) == []
