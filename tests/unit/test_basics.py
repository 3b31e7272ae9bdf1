"""Unit tests of the small pure pieces: sharding, codecs, command decoding, validation,
the error tree's wire form, list paging, request dedup pruning, and how id limits meet
LMDB's key size."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coda import errors
from coda.errors import CodaError, InvalidArgument, PayloadError
from coda.flow import commands, limits, model, queries, sharding, state_machine, validate
from coda.flow.applier import Applier
from coda.storage import codec, keys
from coda.storage.env import LmdbOptions, ShardStore

FAST = LmdbOptions(sync=False, metasync=False)  # no fsync: nothing here outlives the process


class Shard:
    """A real LMDB shard store behind an Applier, one committed entry per call."""

    def __init__(self, path):
        self.store = ShardStore(str(path), FAST)
        self.applier = Applier(self.store)
        self.index = 0

    def apply(self, data) -> dict:
        self.index += 1
        result = self.applier.apply(self.index, data)
        self.applier.commit()
        return result

    def start(self, workflow_id, *, request_id, time_ms, run_id=None,
              workflow_type="t", policy=model.ALLOW_DUPLICATE) -> dict:
        return self.apply(commands.start_workflow(
            request_id=request_id, time_ms=time_ms, workflow_id=workflow_id,
            workflow_type=workflow_type, input_payload=codec.pack(None),
            run_id=run_id or f"run-{self.index + 1}", reuse_policy=policy))

    def barrier(self, time_ms, request_id=None) -> dict:
        body = {"time_ms": time_ms}
        if request_id is not None:
            body["request_id"] = request_id
        return self.apply(commands.encode(commands.BARRIER, body))

    def remembered(self) -> dict[str, int]:
        """request id -> time_ms, from both dedup tables (which must agree)."""
        with self.store.read() as txn:
            by_id = {k.decode(): codec.unpack(v)["time_ms"] for k, v in txn.scan(keys.REQUESTS)}
            by_time = {keys.request_id_from_time_key(k): keys.from_u64(k[:8])
                       for k, _ in txn.scan(keys.REQUESTS_BY_TIME)}
            raw = txn.get(keys.META, state_machine.META_REQUESTS_COUNT)
        assert by_id == by_time
        assert (keys.from_u64(raw) if raw else 0) == len(by_id)
        return by_id


@pytest.fixture
def shard(tmp_path):
    s = Shard(tmp_path / "shard")
    yield s
    s.store.close()


# --- sharding ----------------------------------------------------------------------------

# Computed once with hashlib.blake2b(id.encode(), digest_size=8), big-endian, outside Coda.
# They must never change: a changed value moves workflows to another shard.
KNOWN_HASHES = {
    "": 0xE4A6A0577479B2B4,
    "a": 0x40F89E395B66422F,
    "wf-1": 0x585EE2087AF1C278,
    "ev-1": 0x3350297F6E9C1A5D,
    "process_event": 0x67520C2946B1523B,
    "ünïcødé": 0x59AED66C67A64E39,
    "schedule/nightly": 0x5A8321315B519E48,
}
KNOWN_SHARDS = {  # id -> (shard of 3, of 16, of 256)
    "": (0, 4, 180), "a": (2, 15, 47), "wf-1": (1, 8, 120), "ev-1": (0, 13, 93),
    "process_event": (2, 11, 59), "ünïcødé": (2, 9, 57), "schedule/nightly": (0, 8, 72),
}


@pytest.mark.parametrize("name", sorted(KNOWN_HASHES))
def test_shard_hash_is_pinned(name):
    assert sharding.stable_hash64(name) == KNOWN_HASHES[name]
    independent = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    assert independent == KNOWN_HASHES[name]
    assert tuple(sharding.shard_for(name, n) for n in (3, 16, 256)) == KNOWN_SHARDS[name]
    assert sharding.shard_for(name, 1) == 0


def test_shard_is_the_same_in_another_process_with_another_hash_seed():
    """Python's hash() of a str changes with PYTHONHASHSEED; the shard must not."""
    code = ("from coda.flow import sharding; "
            "print([sharding.shard_for(n, 16) for n in ('a', 'wf-1', 'ünïcødé')])")
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONHASHSEED=hash_seed))
        assert out.stdout.strip() == "[15, 8, 9]"


# Chi-square critical values at p = 0.001 for (shards - 1) degrees of freedom.
CHI2_CRITICAL = {7: 22.46, 16: 37.70, 256: 330.5}


@pytest.mark.parametrize("shard_count", sorted(CHI2_CRITICAL))
def test_shards_are_evenly_used(shard_count):
    ids = [f"wf-{i}" for i in range(10_000)]
    counts = Counter(sharding.shard_for(i, shard_count) for i in ids)
    assert set(counts) == set(range(shard_count))
    expected = len(ids) / shard_count
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < CHI2_CRITICAL[shard_count], (chi2, counts)
    assert max(counts.values()) < 1.6 * expected and min(counts.values()) > 0.5 * expected


def test_shard_count_must_be_positive():
    with pytest.raises(AssertionError):
        sharding.shard_for("a", 0)


# --- codec -------------------------------------------------------------------------------

def _roundtrip_form(value):
    """What msgpack gives back for `value`: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [_roundtrip_form(v) for v in value]
    if isinstance(value, dict):
        return {k: _roundtrip_form(v) for k, v in value.items()}
    return value


PAYLOADS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(PAYLOADS)
def test_codec_round_trips(value):
    data = codec.encode_payload(value, what="workflow input", limit_bytes=1 << 20)
    assert data == codec.pack(value)
    decoded = codec.decode_payload(data, what="workflow input")
    assert decoded == _roundtrip_form(value)
    # str stays str and bytes stay bytes (the two must not collapse into one another).
    assert codec.unpack(codec.pack(["s", b"b"])) == ["s", b"b"]
    assert type(codec.unpack(codec.pack(b"b"))) is bytes


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(PAYLOADS, max_size=40) | st.integers(15, 17).map(lambda n: [None] * n)
       | st.sampled_from([[0] * 65_535, [0] * 65_536]))
def test_an_array_of_packed_values_is_the_packed_array(values):
    # History goes out as stored (flow.dispatches): spliced bytes must be what packing
    # the decoded events would give, at every array header size (fix, 16-bit, 32-bit).
    spliced = codec.pack_array_of_packed([codec.pack(v) for v in values])
    assert spliced == codec.pack(values)
    assert codec.unpack(spliced) == _roundtrip_form(values)


@pytest.mark.parametrize("event_id", [1, 255, 256, 2**32, 2**64 - 1])
def test_a_history_key_gives_back_its_event_id(event_id):
    key = keys.history_key("wf-\xff/1", "run-1", event_id)
    assert keys.history_event_id(key) == event_id
    assert key.startswith(keys.history_prefix("wf-\xff/1", "run-1"))


def _nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    object(), {1, 2}, 2**64, -(2**63) - 1, "\ud800", _nested(2_000), {"k": object()}, lambda: None,
], ids=["object", "set", "u64 overflow", "i64 underflow", "lone surrogate", "too deep",
        "nested object", "function"])
def test_unencodable_payload_is_refused_clearly(value):
    with pytest.raises(PayloadError) as info:
        codec.encode_payload(value, what="task result", limit_bytes=1 << 20)
    err = info.value
    assert isinstance(err, InvalidArgument) and err.code == errors.CODE_INVALID_ARGUMENT
    assert err.message.startswith("task result can't be encoded as msgpack")
    assert err.details == {"what": "task result"}
    assert not err.retryable and err.definite


def test_payload_over_the_limit_is_refused_with_its_size():
    value = b"x" * 100
    size = len(codec.pack(value))
    assert codec.encode_payload(value, what="state value", limit_bytes=size) == codec.pack(value)
    with pytest.raises(PayloadError) as info:
        codec.encode_payload(value, what="state value", limit_bytes=size - 1)
    err = info.value
    assert err.details == {"what": "state value", "size_bytes": size, "limit_bytes": size - 1}
    assert f"{size} bytes" in err.message and f"limit of {size - 1} bytes" in err.message
    assert err.message.startswith("state value")


@pytest.mark.parametrize("data", [b"", b"\xc1", codec.pack([1, 2])[:-1], codec.pack(1) + b"\x01",
                                  b"\x92\x01"])
def test_malformed_payload_bytes_raise_payload_error(data):
    with pytest.raises(PayloadError, match="^workflow result is not valid msgpack"):
        codec.decode_payload(data, what="workflow result")


# --- commands ----------------------------------------------------------------------------

def test_commands_round_trip():
    data = commands.start_workflow(request_id="r", time_ms=5, workflow_id="w", workflow_type="t",
                                   input_payload=b"\x90", run_id="run",
                                   reuse_policy="REJECT_DUPLICATE")
    cmd = commands.decode(data)
    assert cmd == commands.Command(commands.START_WORKFLOW, {
        "request_id": "r", "time_ms": 5, "workflow_id": "w", "workflow_type": "t",
        "input": b"\x90", "run_id": "run", "reuse_policy": "REJECT_DUPLICATE",
        "execution_timeout_ms": 0, "allow_undeclared_type": True})
    assert commands.decode(bytearray(commands.barrier(time_ms=7))) == commands.Command(
        commands.BARRIER, {"time_ms": 7})


GOOD_BODY = {"time_ms": 1}


@pytest.mark.parametrize("data, fragment", [
    (None, "command must be bytes, got NoneType"),
    ("text", "command must be bytes, got str"),
    (memoryview(b"\x93"), "command must be bytes, got memoryview"),
    (b"", "command is not valid msgpack"),
    (b"\xc1", "command is not valid msgpack"),
    (codec.pack([1, "barrier", GOOD_BODY]) + b"\x00", "command is not valid msgpack"),
    (codec.pack({"version": 1}), "command must be [version, kind, body]"),
    (codec.pack([1, "barrier"]), "command must be [version, kind, body]"),
    (codec.pack([1, "barrier", GOOD_BODY, 4]), "command must be [version, kind, body]"),
    (codec.pack([2, "barrier", GOOD_BODY]), "command version 2 is not supported (this build: 1)"),
    (codec.pack([0, "barrier", GOOD_BODY]), "command version 0 is not supported"),
    (codec.pack(["1", "barrier", GOOD_BODY]), "command version '1' is not supported"),
    # msgpack true and 1.0 compare equal to 1 in Python; neither is version 1.
    (codec.pack([True, "barrier", GOOD_BODY]), "command version True is not supported"),
    (codec.pack([1.0, "barrier", GOOD_BODY]), "command version 1.0 is not supported"),
    (codec.pack([1, "cancel", GOOD_BODY]), "unknown command kind 'cancel'"),
    (codec.pack([1, None, GOOD_BODY]), "unknown command kind None"),
    (codec.pack([1, "barrier", [1]]), "command barrier body must be a map"),
])
def test_decode_errors_are_typed_and_say_what_is_wrong(data, fragment):
    with pytest.raises(commands.CommandError) as info:
        commands.decode(data)
    assert isinstance(info.value, InvalidArgument)
    assert info.value.code == errors.CODE_INVALID_ARGUMENT and info.value.definite
    assert fragment in info.value.message


def test_oversized_commands_are_refused_both_ways(monkeypatch):
    monkeypatch.setattr(limits, "command_bytes_max", 64)
    with pytest.raises(InvalidArgument) as info:
        commands.start_workflow(request_id="r", time_ms=5, workflow_id="w", workflow_type="t",
                                input_payload=b"x" * 64, run_id="run",
                                reuse_policy="ALLOW_DUPLICATE")
    assert info.value.details["limit_bytes"] == 64 and info.value.details["size_bytes"] > 64
    assert "start_workflow" in info.value.message and "over the limit of 64" in info.value.message
    with pytest.raises(commands.CommandError, match="over 64"):
        commands.decode(codec.pack([1, "barrier", {"time_ms": 1, "pad": "x" * 64}]))


def test_apply_answers_malformed_commands_with_an_error_and_never_raises():
    class NoWrites:
        def get(self, db, key):
            return None

        def put(self, db, key, value):
            raise AssertionError("a malformed command wrote")

        def delete(self, db, key):
            raise AssertionError("a malformed command deleted")

        def scan(self, db, *, prefix=b"", start=b""):
            return iter(())

    for data in (None, b"\xc1", codec.pack([9, "barrier", {}]), codec.pack([1, "barrier", {}])):
        result = state_machine.apply(NoWrites(), data)
        assert state_machine.is_error(result)
        assert result["error"]["code"] == errors.CODE_INVALID_ARGUMENT


# --- validation --------------------------------------------------------------------------

VALIDATORS = [
    (validate.workflow_id, "workflow_id", limits.workflow_id_bytes_max),
    (validate.type_name, "workflow_type", limits.type_name_bytes_max),
    (lambda v: validate.type_name(v, "task_type"), "task_type", limits.type_name_bytes_max),
    (validate.request_id, "request_id", limits.request_id_bytes_max),
    (validate.run_id, "run_id", limits.run_id_bytes_max),
]


@pytest.mark.parametrize("check, field, max_bytes", VALIDATORS, ids=[v[1] for v in VALIDATORS])
def test_validation_errors_name_the_field(check, field, max_bytes):
    cases = [(None, "must be a string, got NoneType"), (12, "must be a string, got int"),
             (b"id", "must be a string, got bytes"), ("", "must not be empty"),
             ("a\x00b", "must not contain NUL"),
             ("x" * (max_bytes + 1),
              f"is {max_bytes + 1} bytes, over the limit of {max_bytes} bytes"),
             # Bytes count, not characters: within the limit in characters, over in bytes.
             ("é" * (max_bytes // 2 + 1), "over the limit")]
    for value, fragment in cases:
        with pytest.raises(InvalidArgument) as info:
            check(value)
        err = info.value
        assert err.details["field"] == field
        assert err.message.startswith(field + " ") and fragment in err.message, err.message
    with pytest.raises(InvalidArgument) as info:
        check("x" * (max_bytes + 1))
    assert info.value.details == {"field": field, "size_bytes": max_bytes + 1,
                                  "limit_bytes": max_bytes}
    for value in ("x", "x" * max_bytes, "é" * (max_bytes // 2), "ü/ß:-_. ok"):
        assert check(value) == value


# --- errors on the wire ------------------------------------------------------------------

ERROR_CLASSES = [errors.InvalidArgument, errors.ConfigError, errors.NotFound,
                 errors.AlreadyExists, errors.ResourceExhausted, errors.NotLeader,
                 errors.Unavailable, errors.Indeterminate, errors.Internal]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_survive_the_wire(cls):
    err = cls("workflow 'w' on shard 3: no", workflow_id="w", shard=3, leader_hint="n2:7100")
    wire = codec.unpack(codec.pack(err.to_wire()))  # results travel and are stored as msgpack
    back = errors.from_wire(wire)
    assert type(back) is cls
    assert (back.code, back.message, back.details) == (err.code, err.message, err.details)
    assert (back.retryable, back.definite) == (cls.retryable, cls.definite)
    assert isinstance(back, CodaError) and str(back) == err.message


def test_error_tree_answers_retryable_and_definite():
    table = {cls.__name__: (cls.retryable, cls.definite) for cls in ERROR_CLASSES}
    assert table == {
        "InvalidArgument": (False, True), "ConfigError": (False, True),
        "NotFound": (False, True), "AlreadyExists": (False, True),
        "ResourceExhausted": (True, True), "NotLeader": (True, True),
        "Unavailable": (True, True), "Indeterminate": (True, False),
        "Internal": (False, False)}
    assert len({cls.code for cls in ERROR_CLASSES}) == len(ERROR_CLASSES)


def test_from_wire_of_subclasses_unknown_codes_and_partial_maps():
    payload = errors.from_wire(PayloadError("input is bad", what="input").to_wire())
    assert type(payload) is errors.InvalidArgument and payload.details == {"what": "input"}
    unknown = errors.from_wire({"code": "FROM_THE_FUTURE", "message": "m", "details": {"a": 1}})
    assert type(unknown) is errors.Internal and unknown.details == {"a": 1}
    bare = errors.from_wire({"code": errors.CODE_NOT_LEADER})
    assert type(bare) is errors.NotLeader and bare.message == "" and bare.details == {}
    assert bare.leader_hint is None
    assert errors.from_wire(errors.NotLeader("x", leader_hint="h:1").to_wire()).leader_hint == "h:1"


# --- identifiers against LMDB's key size -------------------------------------------------

def test_longest_valid_ids_fit_in_lmdb_keys(tmp_path):
    """Every id that validates must be storable: LMDB refuses keys over its compiled-in
    maximum (511 bytes), and the longest keys embed a workflow id and a run id."""
    env = lmdb.open(str(tmp_path / "probe"), max_dbs=1)
    key_bytes_max = env.max_key_size()
    env.close()
    longest = {
        "workflow": keys.workflow_key("w" * limits.workflow_id_bytes_max),
        "history": keys.history_key("w" * limits.workflow_id_bytes_max,
                                    "r" * limits.run_id_bytes_max, 2**64 - 1),
        "run": keys.run_key("w" * limits.workflow_id_bytes_max, "r" * limits.run_id_bytes_max),
        "queue": keys.queue_key(keys.workflow_queue_name("t" * limits.type_name_bytes_max), 1),
        "request by time": keys.request_time_key(1, "q" * limits.request_id_bytes_max),
    }
    too_long = {name: len(key) for name, key in longest.items() if len(key) > key_bytes_max}
    assert not too_long, (
        f"keys over LMDB's {key_bytes_max}-byte key limit with ids at flow.limits' maxima "
        f"(workflow_id_bytes_max={limits.workflow_id_bytes_max}, "
        f"run_id_bytes_max={limits.run_id_bytes_max}): {too_long}")

    shard = Shard(tmp_path / "shard")
    try:
        result = shard.start("é" * (limits.workflow_id_bytes_max // 2), request_id="r",
                             time_ms=1, run_id="r" * limits.run_id_bytes_max)
        assert result == {"ok": {"run_id": "r" * limits.run_id_bytes_max, "started": True}}
    finally:
        shard.store.close()


# --- list paging -------------------------------------------------------------------------

WORKFLOW_COUNT = 150


def _type_of(i: int) -> str:
    return "rare" if i % 17 == 3 else ("even" if i % 2 == 0 else "odd")


@pytest.fixture(scope="module")
def listing_shard(tmp_path_factory):
    shard = Shard(tmp_path_factory.mktemp("listing"))
    # Inserted out of id order; a few restarted with TERMINATE_IF_RUNNING (still one
    # current run each, the old run archived).
    for i in sorted(range(WORKFLOW_COUNT), key=lambda i: sharding.stable_hash64(str(i))):
        assert "ok" in shard.start(f"wf-{i:04d}", request_id=f"r-{i}", time_ms=i,
                                   workflow_type=_type_of(i))
    for i in range(0, WORKFLOW_COUNT, 10):
        assert "ok" in shard.start(f"wf-{i:04d}", request_id=f"again-{i}", time_ms=1000 + i,
                                   workflow_type=_type_of(i), policy=model.TERMINATE_IF_RUNNING)
    yield shard
    shard.store.close()


def _page_through(txn, *, statuses, types, page_size, scan_max, after=""):
    pages = []
    while True:
        page = queries.list_page(txn, after=after, statuses=statuses, types=types,
                                 page_size=page_size, scan_max=scan_max)
        pages.append(page)
        assert len(page["items"]) <= page_size
        for record in page["items"]:
            assert after < record["workflow_id"] <= page["resume_after"]
        if page["exhausted"]:
            return pages
        # A page that is not the last always moves forward, even when it holds nothing.
        assert page["resume_after"] is not None and page["resume_after"] > after
        after = page["resume_after"]
        assert len(pages) <= WORKFLOW_COUNT + 1, "paging does not make progress"


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(page_size=st.integers(1, 40), scan_max=st.integers(1, 60),
       statuses=st.sampled_from([(), (model.RUNNING,), (model.COMPLETED,),
                                 (model.TERMINATED, model.RUNNING)]),
       types=st.sampled_from([(), ("rare",), ("even",), ("rare", "odd"), ("missing",)]))
def test_list_pages_return_every_match_once_in_order(listing_shard, page_size, scan_max,
                                                     statuses, types):
    expected = [f"wf-{i:04d}" for i in range(WORKFLOW_COUNT)
                if (not types or _type_of(i) in types)
                and (not statuses or model.RUNNING in statuses)]
    with listing_shard.store.read() as txn:
        pages = _page_through(txn, statuses=statuses, types=types, page_size=page_size,
                              scan_max=scan_max)
    got = [r["workflow_id"] for page in pages for r in page["items"]]
    assert got == expected
    for page in pages:
        for record in page["items"]:
            assert record["status"] == model.RUNNING
            assert not types or record["workflow_type"] in types
    # Each page scans at most scan_max records: the page count is bounded by the scan.
    assert len(pages) <= WORKFLOW_COUNT // scan_max + len(expected) // page_size + 2


def test_list_page_from_a_cursor_between_ids_and_past_the_end(listing_shard):
    with listing_shard.store.read() as txn:
        page = queries.list_page(txn, after="wf-0099x", statuses=(), types=(), page_size=2)
        assert [r["workflow_id"] for r in page["items"]] == ["wf-0100", "wf-0101"]
        assert page == dict(page, resume_after="wf-0101", exhausted=False)
        last = queries.list_page(txn, after="wf-0147", statuses=(), types=(), page_size=2)
        assert [r["workflow_id"] for r in last["items"]] == ["wf-0148", "wf-0149"]
        assert last["exhausted"] and last["resume_after"] == "wf-0149"
        past = queries.list_page(txn, after="wf-9999", statuses=(), types=(), page_size=5)
        assert past == {"items": [], "resume_after": None, "exhausted": True}
        # A sparse filter stops at scan_max with a short (here empty) page and a cursor.
        sparse = queries.list_page(txn, after="", statuses=(), types=("rare",), page_size=5,
                                   scan_max=3)
        assert sparse == {"items": [], "resume_after": "wf-0002", "exhausted": False}


# --- request dedup pruning ---------------------------------------------------------------

@pytest.fixture
def small_dedup(monkeypatch):
    monkeypatch.setattr(limits, "request_dedup_window_ms", 1_000)
    monkeypatch.setattr(limits, "request_dedup_entries_max", 4)
    monkeypatch.setattr(limits, "request_dedup_prune_per_command_max", 2)


def test_a_retry_within_the_window_gets_the_same_answer(shard, small_dedup):
    first = shard.start("w", request_id="r1", time_ms=0, run_id="run-a")
    assert first == {"ok": {"run_id": "run-a", "started": True}}
    assert shard.start("w", request_id="r1", time_ms=1_000, run_id="run-b") == first
    assert shard.remembered() == {"r1": 0}  # at exactly the window's edge: still kept


def test_request_ids_expire_after_the_window(shard, small_dedup):
    assert "ok" in shard.start("w", request_id="r1", time_ms=0, run_id="run-a")
    assert "ok" in shard.barrier(10, request_id="r2")
    assert shard.remembered() == {"r1": 0, "r2": 10}
    assert shard.barrier(1_010) == {"ok": {}}         # horizon 10: r1 expired, r2 not yet
    assert shard.remembered() == {"r2": 10}
    # The retry of an expired start finds the run it made: same run, reported as not new.
    retry = shard.start("w", request_id="r1", time_ms=1_011, run_id="run-b")
    assert retry == {"ok": {"run_id": "run-a", "started": False}}
    assert shard.remembered() == {"r1": 1_011}        # r2 expired with the same command
    with shard.store.read() as txn:
        assert queries.describe(txn, "w")["run_id"] == "run-a"
        assert list(txn.scan(keys.RUNS)) == []


def test_entry_cap_forgets_the_oldest_first(shard, small_dedup):
    for i in range(7):
        assert "ok" in shard.start(f"w{i}", request_id=f"r{i}", time_ms=100 - i % 2)
        assert len(shard.remembered()) <= limits.request_dedup_entries_max
    # Ordered by (time, id): the odd ones were stamped earlier and go first.
    assert shard.remembered() == {"r0": 100, "r2": 100, "r4": 100, "r6": 100}
    # r1 was forgotten: its retry is not answered from the table but by the run it made.
    assert shard.start("w1", request_id="r1", time_ms=101) == {
        "ok": {"run_id": "run-2", "started": False}}


def test_pruning_is_bounded_per_command(shard, monkeypatch):
    monkeypatch.setattr(limits, "request_dedup_window_ms", 1_000)
    monkeypatch.setattr(limits, "request_dedup_prune_per_command_max", 2)
    for i in range(7):
        assert "ok" in shard.barrier(i, request_id=f"r{i}")
    assert shard.barrier(5_000) == {"ok": {}}
    assert sorted(shard.remembered()) == ["r2", "r3", "r4", "r5", "r6"]
    assert shard.barrier(5_001, request_id="new") == {"ok": {}}
    assert sorted(shard.remembered()) == ["new", "r4", "r5", "r6"]


def test_a_failed_command_prunes_nothing(shard, small_dedup):
    assert "ok" in shard.start("w", request_id="r1", time_ms=0, run_id="run-a")
    refused = shard.start("w", request_id="r2", time_ms=5_000, policy=model.REJECT_DUPLICATE)
    assert refused["error"]["code"] == errors.CODE_ALREADY_EXISTS
    assert "'w' is already running (run run-a)" in refused["error"]["message"]
    assert shard.remembered() == {"r1": 0}            # rolled back with the command


def _oldest_is_the_first_time_key(shard) -> None:
    """state_machine.META_REQUESTS_OLDEST is the time prefix of the first REQUESTS_BY_TIME
    key, absent when there is none (what lets a command skip the prune scan)."""
    with shard.store.read() as txn:
        first = next(iter(txn.scan(keys.REQUESTS_BY_TIME)), None)
        oldest = txn.get(keys.META, state_machine.META_REQUESTS_OLDEST)
    assert oldest == (first[0][:8] if first is not None else None), (first, oldest)


def test_the_oldest_request_time_follows_the_table(shard, small_dedup):
    # Clocks that step back, expiry, the entry cap and the per-command bound in turn.
    times = [50, 40, 45, 40, 2_000, 1_990, 1_995, 2_500, 2_600, 9_000, 9_001, 8_999]
    for i, time_ms in enumerate(times):
        assert "ok" in shard.barrier(time_ms, request_id=f"r{i}")
        _oldest_is_the_first_time_key(shard)
    assert shard.barrier(60_000) == {"ok": {}}  # all expired: two per command go
    _oldest_is_the_first_time_key(shard)
    while shard.remembered():
        assert shard.barrier(60_000) == {"ok": {}}
        _oldest_is_the_first_time_key(shard)


def test_a_store_without_the_oldest_time_prunes_by_scanning(shard, small_dedup):
    """Stores written before META_REQUESTS_OLDEST existed: the next prune scans, as
    before, and sets it."""
    for i in range(3):
        assert "ok" in shard.barrier(i, request_id=f"r{i}")
    batch = shard.store.begin_batch()
    batch.write([[keys.META, state_machine.META_REQUESTS_OLDEST, None]])
    batch.commit(shard.store.applied_index())
    assert shard.barrier(1_001) == {"ok": {}}  # horizon 1: r0 expired
    assert sorted(shard.remembered()) == ["r1", "r2"]
    _oldest_is_the_first_time_key(shard)
