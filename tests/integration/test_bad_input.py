"""Bad input gets a clear, typed error, and no node process crashes.

One cluster serves the whole module (payload limit lowered to 64 KiB so the server-side
check can be reached below the client's own). After every test an autouse check makes
sure all three node processes still run and the cluster still starts and reads a
workflow on every shard.

Covered: unknown workflow and run ids; workflow input that is not msgpack (raw gRPC stub,
past the SDK's encoder); payloads over the client's limit (PayloadError before anything
is sent), over the cluster's configured limit (INVALID_ARGUMENT from the server) and over
the gRPC message cap; empty, NUL-bearing and oversized workflow ids and types; unknown
status filters and garbage page tokens; unknown reuse policies (SDK string, raw enum);
bytes that are not a protobuf message and bytes that are not HTTP/2; strangers on the
Raft ports (a pysyncobj peer with the wrong cluster secret claiming to be a member, and raw
sockets sending garbage); and bad configurations of `coda-flow serve`, which must exit
non-zero with a message naming the problem and no traceback.
"""

import asyncio
import base64
import os
import random
import socket
import struct
import subprocess
import sys
import time
import uuid

import grpc
import pytest

import coda
from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda.errors import CodaError, InvalidArgument, NotFound, PayloadError
from coda.flow import limits, model, wire
from coda.flow.cli import _to_toml
from coda.storage import codec
from harness import Cluster, free_port_block

pytestmark = pytest.mark.cluster

SHARDS = 2
PAYLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("bad_input")), shards=SHARDS,
                payload_bytes_max=PAYLOAD_LIMIT)
    try:
        c.start()
        c.wait_leaders()
        yield c
    finally:
        c.close()


@pytest.fixture(autouse=True)
def still_serving(cluster):
    """After each test: every node alive, and a start + describe works on every shard."""
    yield
    cluster.assert_alive()
    ids = cluster.ids_by_shard(f"alive-{uuid.uuid4().hex[:8]}", 1)
    with cluster.client(timeout_s=60) as c:
        for shard, (wid,) in ids.items():
            run_id = c.start_workflow("alive", {"shard": shard}, workflow_id=wid).run_id
            assert c.describe_workflow(wid)["run_id"] == run_id
    cluster.assert_alive()
    for i in range(3):
        assert "Traceback" not in cluster.read_log(i), cluster.read_log(i)[-3000:]


@pytest.fixture(scope="module")
def stubs(cluster):
    """A raw FlowStub per node (no SDK: nothing is validated or encoded for us)."""
    channels = [grpc.insecure_channel(n["client"], options=[
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024)]) for n in cluster.nodes]
    yield [pb_grpc.FlowStub(ch) for ch in channels]
    for ch in channels:
        ch.close()


def raw_error(call, request) -> tuple[grpc.StatusCode, CodaError]:
    """Make a raw call that must fail; returns its gRPC status and the CodaError it carries."""
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    exc = info.value
    carried = any(k == wire.ERROR_METADATA_KEY for k, _ in (exc.trailing_metadata() or ()))
    assert carried, f"no {wire.ERROR_METADATA_KEY} trailer: {exc.code()} {exc.details()}"
    return exc.code(), wire.error_from_rpc(exc)


def start_request(**fields) -> pb.StartWorkflowRequest:
    base = dict(workflow_id=f"bad-{uuid.uuid4().hex}", workflow_type="bad",
                input=codec.pack({"ok": True}), request_id=uuid.uuid4().hex)
    base.update(fields)
    return pb.StartWorkflowRequest(**base)


def assert_invalid(stub_call, request, field: str, *words: str) -> CodaError:
    code, err = raw_error(stub_call, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, err)
    assert type(err) is InvalidArgument and err.details.get("field") == field, (err, err.details)
    for word in words:
        assert word in err.message, (word, err.message)
    return err


# --- workflow and run ids --------------------------------------------------------------

def test_unknown_workflow_and_run_ids(cluster):
    with cluster.client() as c:
        with pytest.raises(NotFound, match="not found") as info:
            c.describe_workflow("never-started")
        assert info.value.details["workflow_id"] == "never-started"
        run_id = c.start_workflow("known", {}, workflow_id="known-1").run_id
        with pytest.raises(NotFound, match="has no run") as info:
            c.describe_workflow("known-1", run_id="0" * 32)
        assert info.value.details == {"workflow_id": "known-1", "run_id": "0" * 32}
        with pytest.raises(NotFound):
            c.describe_workflow("never-started", run_id=run_id)
        with pytest.raises(InvalidArgument, match="run_id"):
            c.describe_workflow("known-1", run_id="r" * (limits.run_id_bytes_max + 1))
        assert c.describe_workflow("known-1", run_id=run_id)["run_id"] == run_id


@pytest.mark.parametrize("field,value,words", [
    ("workflow_id", "", ["must not be empty"]),
    ("workflow_id", "a\x00b", ["NUL"]),
    ("workflow_id", "w" * (limits.workflow_id_bytes_max + 1), ["bytes, over the limit"]),
    ("workflow_id", "é" * (limits.workflow_id_bytes_max // 2 + 1), ["bytes, over the limit"]),
    ("workflow_type", "", ["must not be empty"]),
    ("workflow_type", "t\x00", ["NUL"]),
    ("workflow_type", "t" * (limits.type_name_bytes_max + 1), ["bytes, over the limit"]),
    ("request_id", "q" * (limits.request_id_bytes_max + 1), ["bytes, over the limit"]),
], ids=["id-empty", "id-nul", "id-long", "id-long-utf8", "type-empty", "type-nul",
        "type-long", "request-id-long"])
def test_bad_ids_and_types(cluster, stubs, field, value, words):
    for stub in stubs:  # leader or not, forwarded or not: the same answer
        assert_invalid(stub.StartWorkflow, start_request(**{field: value}), field, field, *words)
    if field == "workflow_id" and value:
        assert_invalid(stubs[0].DescribeWorkflow, pb.DescribeWorkflowRequest(workflow_id=value),
                       field, *words)
    # Through the SDK too (it sends the id as given; an empty id means "generate one").
    if value and field != "request_id":
        with cluster.client() as c:
            kwargs = {"workflow_id": value} if field == "workflow_id" else {}
            wtype = value if field == "workflow_type" else "bad"
            with pytest.raises(InvalidArgument, match=field):
                c.start_workflow(wtype, {}, **kwargs)


# --- payloads --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"\x01\x02", b"\xd9\x05ab"],
                         ids=["never-used-byte", "truncated-array", "trailing-bytes",
                              "truncated-str"])
def test_input_that_is_not_msgpack(cluster, stubs, data):
    request = start_request(input=data)
    code, err = raw_error(stubs[0].StartWorkflow, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and type(err) is InvalidArgument, (code, err)
    assert err.message.startswith("workflow input is not valid msgpack: "), err.message
    assert not err.message.endswith(": "), err.message  # says why, not just that
    assert err.details.get("what") == "workflow input"
    with cluster.client() as c:
        with pytest.raises(NotFound):
            c.describe_workflow(request.workflow_id)


def test_payload_over_the_client_limit(cluster):
    async def run():
        async with coda.Client(cluster.address, allow_undeclared_types=True) as client:
            big = {"blob": b"x" * (limits.payload_bytes_default + 1)}
            with pytest.raises(PayloadError, match="over the limit") as info:
                await client.start_workflow("big", big, workflow_id="big-client")
            assert info.value.details["limit_bytes"] == limits.payload_bytes_default
            with pytest.raises(PayloadError, match="can't be encoded"):
                await client.start_workflow("big", {"x": object()}, workflow_id="big-client")
            async with coda.Client(cluster.address, payload_bytes_max=1024, allow_undeclared_types=True) as small:
                with pytest.raises(PayloadError, match="1024"):
                    await small.start_workflow("big", {"blob": b"x" * 1024},
                                               workflow_id="big-client")
            with pytest.raises(NotFound):
                await client.describe_workflow("big-client")

    asyncio.run(run())


def test_payload_over_the_cluster_limit(cluster, stubs):
    payload = codec.pack({"blob": b"x" * PAYLOAD_LIMIT})  # fits the SDK, not the cluster
    for stub in stubs:
        err = assert_invalid(stub.StartWorkflow, start_request(input=payload), "input",
                             "workflow input", str(PAYLOAD_LIMIT))
        assert err.details["limit_bytes"] == PAYLOAD_LIMIT
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="over the limit"):
            c.start_workflow("big", {"blob": b"x" * PAYLOAD_LIMIT}, workflow_id="big-server")
        with pytest.raises(NotFound):
            c.describe_workflow("big-server")


def test_message_over_the_grpc_cap(stubs):
    payload = b"\xc4" + b"x" * (limits.grpc_message_bytes_max + 1024)
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].StartWorkflow(start_request(input=payload), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value


# --- listing -----------------------------------------------------------------------------

def test_unknown_status_filter(cluster, stubs):
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="unknown status 'SLEEPING'") as info:
            c.list_workflows(statuses=["SLEEPING"])
        assert info.value.details["field"] == "statuses"
        with pytest.raises(InvalidArgument, match="unknown status"):
            c.list_workflows(statuses=["running"])  # statuses are upper case
        with pytest.raises(InvalidArgument, match="workflow_type"):
            c.list_workflows(workflow_types=["a\x00b"])
        assert c.list_workflows(statuses=[model.RUNNING], page_size=1)[0]


@pytest.mark.parametrize("token", [
    b"garbage", b"\x00\xff" * 10, b"!!!!", b"AAAA",
    base64.urlsafe_b64encode(codec.pack([1, "x"])),
    base64.urlsafe_b64encode(codec.pack([99, "x", "f"])),
    base64.urlsafe_b64encode(codec.pack([1, 5, "f"])),
    base64.urlsafe_b64encode(codec.pack({"a": 1})),
    b"A" * (limits.page_token_bytes_max + 4),
], ids=["word", "binary", "bad-base64", "empty-msgpack", "short-list", "bad-version",
        "non-str-cursor", "map", "too-long"])
def test_garbage_page_token(cluster, token):
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="page_token") as info:
            c.list_workflows(page_token=token)
        assert info.value.details["field"] == "page_token"


def test_page_token_from_other_filters(cluster):
    with cluster.client() as c:
        for n in range(3):
            c.start_workflow("paged", {}, workflow_id=f"paged-{n}")
        _, token = c.list_workflows(page_size=1)
        assert token
        with pytest.raises(InvalidArgument, match="different order or filters"):
            c.list_workflows(page_token=token, statuses=[model.RUNNING])


# --- reuse policy ------------------------------------------------------------------------

def test_unknown_reuse_policy(cluster, stubs):
    for value in (4, 99, -1, 2**31 - 1):
        err = assert_invalid(stubs[1].StartWorkflow, start_request(reuse_policy=value),
                             "reuse_policy", "unknown reuse_policy")
        assert str(value) in err.message
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="unknown reuse_policy 'SOMETIMES'"):
            c.start_workflow("reuse", {}, workflow_id="reuse-1", reuse_policy="SOMETIMES")
        with pytest.raises(NotFound):
            c.describe_workflow("reuse-1")


# --- bytes that are not our protocol -----------------------------------------------------

def test_bytes_that_are_not_a_protobuf_message(cluster):
    channel = grpc.insecure_channel(cluster.nodes[0]["client"])
    try:
        call = channel.unary_unary("/coda.api.v1.Flow/StartWorkflow",
                                   request_serializer=None, response_deserializer=None)
        # Corrupt wire format, a truncated field, a string field that is not UTF-8.
        for junk in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x12\x02\xc3\x28"):
            code, err = raw_error(call, junk)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and type(err) is InvalidArgument, err
            assert "not a valid protobuf message" in err.message, err.message
            assert err.details["field"] == "request"
        unknown = channel.unary_unary("/coda.api.v1.Flow/NoSuchMethod",
                                      request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        channel.close()


def send_garbage(address: str, chunks) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except OSError:
                return  # the node hung up on us: fine
            time.sleep(0.05)


def test_garbage_on_the_grpc_port(cluster):
    rng = random.Random(7)
    for n in cluster.nodes:
        send_garbage(n["client"], [rng.randbytes(4096), b"GET / HTTP/1.1\r\n\r\n"])
        send_garbage(n["client"], [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(512)])


# --- strangers on the Raft ports ---------------------------------------------------------

def test_garbage_on_the_raft_ports(cluster):
    rng = random.Random(11)
    for i in range(3):
        for shard in range(SHARDS):
            address = cluster.raft_address(i, shard)
            send_garbage(address, [rng.randbytes(8192)])
            send_garbage(address, [struct.pack("i", -5) + rng.randbytes(64)])
            send_garbage(address, [struct.pack("i", 2**31 - 1) + rng.randbytes(4096)])
            send_garbage(address, [struct.pack("i", 16) + b"\x00" * 16] * 3)


def test_peer_with_the_wrong_secret(cluster):
    """A pysyncobj member with the wrong secret, claiming to be a node of the cluster:
    it must not join, disturb elections or crash anyone."""
    from pysyncobj import SyncObj, SyncObjConf
    shard = 0
    # pysyncobj connects out to nodes whose address sorts below its own: claim the highest.
    claimed = max(range(3), key=lambda i: cluster.raft_address(i, shard))
    others = [cluster.raft_address(i, shard) for i in range(3) if i != claimed]
    bind_port = free_port_block(1, random.Random())
    before = cluster.status()
    impostor = SyncObj(cluster.raft_address(claimed, shard), others, SyncObjConf(
        password="wrong-secret-" + "x" * 20, bindAddress=f"127.0.0.1:{bind_port}",
        autoTick=True, dynamicMembershipChange=False, raftMinTimeout=0.5, raftMaxTimeout=1.0,
        connectionTimeout=1.0, connectionRetryTime=0.2))
    try:
        time.sleep(3.0)  # many connection attempts and election timeouts of the impostor
        assert impostor.getStatus()["leader"] is None and not impostor.isReady()
        assert not any(impostor.isNodeConnected(n) for n in impostor.otherNodes)
        with cluster.client() as c:  # the cluster commits while the impostor knocks
            run_id = c.start_workflow("impostor", {}, workflow_id="during-impostor").run_id
            assert c.describe_workflow("during-impostor")["run_id"] == run_id
    finally:
        impostor.destroy()
    after = cluster.status()
    terms = [max(r["term"] for r in status["shards"][shard]["replicas"])
             for status in (before, after)]
    assert terms[0] == terms[1], f"the impostor's vote requests reached the cluster: {terms}"


# --- bad configurations of `coda-flow serve` ---------------------------------------------

def _config(tmp_path, ports: int) -> dict:
    nodes = [{"id": f"n{i + 1}", "client": f"127.0.0.1:{ports + 10 * i}",
              "metrics": f"127.0.0.1:{ports + 10 * i + 1}",
              "raft": f"127.0.0.1:{ports + 10 * i + 2}"} for i in range(3)]
    return {"node_id": "n1", "data_dir": str(tmp_path / "data"), "shards": 2,
            "secret": "s" * 24, "nodes": nodes, "raft": {}}


def _bad(name):
    """Bad configs: name -> (edit(mapping) -> TOML text or mapping, words the error names)."""
    def drop_secret(m):
        del m["secret"]

    def set_(path, value):
        def edit(m):
            target = m
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return edit

    def dup_ports(m):
        m["nodes"][1]["client"] = m["nodes"][0]["client"]

    def inverted(m):
        m["raft"].update(election_timeout_min_s=3.0, election_timeout_max_s=1.5)

    def unknown_key(m):
        m["bogus_setting"] = 1

    def unknown_raft_key(m):
        m["raft"]["election_timeout_s"] = 2.0

    return {
        "missing-secret": (drop_secret, ["secret is required"]),
        "short-secret": (set_(["secret"], "short"), ["at least 16 characters"]),
        "secret-not-a-string": (set_(["secret"], 12345678901234567890), ["secret", "string"]),
        "duplicate-ports": (dup_ports, ["port", "also used by"]),
        "node-id-not-in-nodes": (set_(["node_id"], "n9"), ["'n9'", "not among"]),
        "election-timeouts-inverted": (inverted, ["election_timeout_max_s", "must exceed"]),
        "unknown-key": (unknown_key, ["unknown setting", "bogus_setting"]),
        "unknown-raft-key": (unknown_raft_key, ["[raft]", "election_timeout_s"]),
        "zero-shards": (set_(["shards"], 0), ["shards must be an integer"]),
        "payload-limit-not-a-number": (set_(["payload_bytes_max"], "big"), ["payload_bytes_max"]),
        "data-dir-not-a-string": (set_(["data_dir"], 5), ["data_dir"]),
        "bad-host-port": (set_(["nodes", 0, "client"], "localhost"), ["client", "host:port"]),
    }[name]


def run_serve(*args, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "coda.flow.cli", "serve", *args],
                              capture_output=True, text=True, timeout=timeout_s,
                              env={k: v for k, v in os.environ.items()
                                   if k != "CODA_CLUSTER_SECRET"})
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"coda-flow serve {args} kept running: the bad config was "
                             f"accepted ({exc.stderr})") from None


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert "bad configuration" in result.stderr, out
    for word in words:
        assert word in result.stderr, (word, out)


@pytest.mark.parametrize("name", ["missing-secret", "short-secret", "secret-not-a-string",
                                  "duplicate-ports", "node-id-not-in-nodes",
                                  "election-timeouts-inverted", "unknown-key",
                                  "unknown-raft-key", "zero-shards",
                                  "payload-limit-not-a-number", "data-dir-not-a-string",
                                  "bad-host-port"])
def test_bad_config(tmp_path, name):
    edit, words = _bad(name)
    mapping = _config(tmp_path, free_port_block(40, random.Random()))
    edit(mapping)
    path = tmp_path / "node.toml"
    if "raft" not in mapping:
        mapping["raft"] = {}
    path.write_text(_to_toml(mapping))
    assert_refused(run_serve("--config", str(path)), *words)


def test_bad_config_files_and_flags(tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('node_id = "n1"\nshards = [2\n')
    assert_refused(run_serve("--config", str(bad_toml)), "not valid TOML")
    assert_refused(run_serve("--config", str(tmp_path / "missing.toml")), "does not exist")
    assert_refused(run_serve("--node-id", "n1", "--data-dir", str(tmp_path), "--shards", "1",
                             "--secret-file", str(tmp_path / "no-secret"),
                             "--node", "n1=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"),
                   "secret_file")
    assert_refused(run_serve("--node-id", "n1", "--node", "n1=127.0.0.1:1"), "--node must be")
