"""The `coda` CLI as a user runs it: a subprocess against a real three-node cluster.

Covered: `workflow start` (human and --json output, idempotent --request-id, a duplicate
start refused with ALREADY_EXISTS, bad --args JSON and bad --reuse-policy as usage errors,
every reuse policy sent as asked: TERMINATE_IF_RUNNING really ends the running run),
`workflow describe` (human and --json, unknown ids), `workflow list` (filters, manual page
tokens from both output forms, --all, tokens bound to their filters), `cluster status`
(human and --json), how the address is given (CODA_ADDRESS, --address, --address over
CODA_ADDRESS, none, malformed, unreachable), and `coda-flow serve` refusing bad flags.

One cluster serves the module: starting one per test would cost more than the tests.
The unreachable-address test bounds the CLI with `--timeout 3`.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid

import pytest

from coda.flow import model
from cli_helpers import (CLI_TIMEOUT_S, _env, as_json, coda, failed, module_cluster,
                         nodes_survive, ok, uid)
from harness import free_port_block, start_many

pytestmark = pytest.mark.cluster

SHARDS = 2
UNREACHABLE_BOUND_S = 15.0  # --timeout 3 plus interpreter start-up on a loaded machine


def human_fields(text: str) -> dict[str, str]:
    """`key   value` lines of `workflow describe` -> {key: value}."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value.strip()
    return out


def dead_address() -> str:
    return f"127.0.0.1:{free_port_block(1, random.Random())}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "cli", SHARDS)


@pytest.fixture(autouse=True)
def _nodes_survive(request):
    yield from nodes_survive(request)


# --- workflow start ------------------------------------------------------------------------

def test_an_undeclared_type_is_refused_unless_allowed(cluster):
    wid = f"undeclared-{uuid.uuid4().hex[:8]}"
    failed(coda("workflow", "start", "no_supervisor_runs_this", "--id", wid,
                address=cluster.address, allow_undeclared=False),
           1, "NOT_FOUND", "no supervisor has declared workflow type 'no_supervisor_runs_this'")
    out = ok(coda("workflow", "start", "no_supervisor_runs_this", "--id", wid,
                  "--allow-undeclared-type", address=cluster.address, allow_undeclared=False))
    assert wid in out


def test_start_human_and_json(cluster):
    wid = uid("cli-human")
    out = ok(coda("workflow", "start", "cli_type", "--id", wid, "--args", '{"project_id": "p1"}',
                  address=cluster.address))
    match = re.fullmatch(rf"started {re.escape(wid)} run ([0-9a-f]+)\n", out)
    assert match, out
    run_id = match.group(1)

    wid2 = uid("cli-json")
    started = as_json(coda("--json", "workflow", "start", "cli_type", "--id", wid2,
                           address=cluster.address))
    assert started["workflow_id"] == wid2 and started["started"] is True, started
    assert started["run_id"] and started["run_id"] != run_id, started

    with cluster.client() as c:
        assert c.describe_workflow(wid)["run_id"] == run_id
        info = c.describe_workflow(wid2)
        assert (info["run_id"], info["workflow_type"]) == (started["run_id"], "cli_type")


def test_request_id_makes_start_idempotent(cluster):
    wid, request_id = uid("cli-req"), uuid.uuid4().hex
    argv = ("workflow", "start", "cli_type", "--id", wid, "--request-id", request_id)
    first = as_json(coda("--json", *argv, address=cluster.address))
    assert first["started"] is True, first
    # Within the server's dedup window a repeat is answered from its request table with
    # the first answer, started included (tests/unit/test_basics.py,
    # test_a_retry_within_the_window_gets_the_same_answer): a client whose first attempt
    # lost its ack did start the workflow. Only past the window does the run's own
    # request id answer started=false. Either way: the same run, and no second one.
    again = as_json(coda("--json", *argv, address=cluster.address))
    assert again == first, (first, again)
    human = ok(coda(*argv, address=cluster.address))
    assert human == f"started {wid} run {first['run_id']}\n", human
    info = as_json(coda("--json", "workflow", "describe", wid, address=cluster.address))
    assert (info["run_id"], info["history_length"]) == (first["run_id"], 1), info
    # A different request id for the same running workflow is a different start: refused.
    failed(coda(*argv[:-1], uuid.uuid4().hex, address=cluster.address), 1, "ALREADY_EXISTS")


def test_second_start_of_running_id_is_refused(cluster):
    wid = uid("cli-dup")
    run_id = as_json(coda("--json", "workflow", "start", "cli_type", "--id", wid,
                          address=cluster.address))["run_id"]
    err = failed(coda("workflow", "start", "cli_type", "--id", wid, address=cluster.address),
                 1, "ALREADY_EXISTS", wid, run_id)
    assert err.startswith("error: ALREADY_EXISTS: "), err
    with cluster.client() as c:
        assert c.describe_workflow(wid)["run_id"] == run_id  # still the first run


def test_bad_args_json_is_a_usage_error(cluster):
    wid = uid("cli-badargs")
    failed(coda("workflow", "start", "cli_type", "--id", wid, "--args", '{"a": ',
                address=cluster.address), 2, "--args", "not valid JSON")
    # Nothing was started.
    failed(coda("workflow", "describe", wid, address=cluster.address), 1, "NOT_FOUND")


def test_every_reuse_policy_is_accepted_and_sent(cluster):
    for policy in model.REUSE_POLICIES:
        wid = uid(f"cli-policy-{policy.lower()}")
        got = as_json(coda("--json", "workflow", "start", "cli_type", "--id", wid,
                           "--reuse-policy", policy, address=cluster.address))
        assert got["started"] is True and got["workflow_id"] == wid, (policy, got)

    # The policy reaches the server: REJECT_DUPLICATE refuses, TERMINATE_IF_RUNNING
    # ends the running run and starts a new one.
    wid = uid("cli-policy-effect")
    first = as_json(coda("--json", "workflow", "start", "cli_type", "--id", wid,
                         address=cluster.address))["run_id"]
    failed(coda("workflow", "start", "cli_type", "--id", wid, "--reuse-policy",
                "REJECT_DUPLICATE", address=cluster.address), 1, "ALREADY_EXISTS",
           "REJECT_DUPLICATE")
    second = as_json(coda("--json", "workflow", "start", "cli_type", "--id", wid,
                          "--reuse-policy", "TERMINATE_IF_RUNNING", address=cluster.address))
    assert second["started"] is True and second["run_id"] != first, (first, second)
    old = as_json(coda("--json", "workflow", "describe", wid, "--run-id", first,
                       address=cluster.address))
    assert (old["run_id"], old["status"]) == (first, model.TERMINATED), old
    assert old["close_time_ms"], old

    failed(coda("workflow", "start", "cli_type", "--id", uid("cli-policy-bad"),
                "--reuse-policy", "SOMETIMES", address=cluster.address),
           2, "--reuse-policy", "SOMETIMES")


# --- workflow describe ---------------------------------------------------------------------

def test_describe_human_json_and_unknown(cluster):
    wid = uid("cli-describe")
    run_id = as_json(coda("--json", "workflow", "start", "describe_type", "--id", wid,
                          address=cluster.address))["run_id"]

    fields = human_fields(ok(coda("workflow", "describe", wid, address=cluster.address)))
    assert fields["workflow_id"] == wid and fields["run_id"] == run_id, fields
    assert fields["status"] == "RUNNING", fields
    assert fields["queued_on"] == "wf/describe_type", fields
    assert fields["workflow_type"] == "describe_type", fields
    assert fields["closed"] == "-", fields
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["started"]), fields

    info = as_json(coda("--json", "workflow", "describe", wid, address=cluster.address))
    assert (info["workflow_id"], info["run_id"], info["status"], info["queued_on"]) == (
        wid, run_id, "RUNNING", "wf/describe_type"), info
    assert info["shard"] == cluster.shard_of(wid), info
    assert info["close_time_ms"] is None and info["start_time_ms"] > 0, info

    missing = uid("cli-missing")
    failed(coda("workflow", "describe", missing, address=cluster.address), 1, "NOT_FOUND", missing)
    failed(coda("--json", "workflow", "describe", missing, address=cluster.address), 1,
           "NOT_FOUND")


# --- workflow list -------------------------------------------------------------------------

def test_list_filters_and_paging(cluster):
    tag = uuid.uuid4().hex[:8]
    type_a, type_b = f"list_a_{tag}", f"list_b_{tag}"
    ids_a = [f"cli-list-{tag}-a{i:02d}" for i in range(8)]
    ids_b = [f"cli-list-{tag}-b{i:02d}" for i in range(3)]
    start_many(cluster.address, ids_a, workflow_type=type_a)
    start_many(cluster.address, ids_b, workflow_type=type_b)
    assert {cluster.shard_of(w) for w in ids_a} == set(range(SHARDS))  # pages merge shards

    def listing(*args):
        return as_json(coda("--json", "workflow", "list", *args, address=cluster.address))

    # Follow the tokens by hand: every id exactly once, in id order.
    seen, token, pages = [], None, 0
    while True:
        page = listing("--type", type_a, "--page-size", "3",
                       *(["--page-token", token] if token else []))
        pages += 1
        assert len(page["workflows"]) <= 3, page
        seen += [w["workflow_id"] for w in page["workflows"]]
        token = page["next_page_token"]
        if token is None:
            break
        assert pages < 10, seen
    assert seen == sorted(ids_a), seen
    assert pages >= 3, pages

    # --all follows them itself; several types are a union.
    everything = listing("--type", type_a, "--page-size", "3", "--all")
    assert [w["workflow_id"] for w in everything["workflows"]] == sorted(ids_a), everything
    assert everything["next_page_token"] is None, everything
    assert all(w["workflow_type"] == type_a and w["status"] == "RUNNING"
               for w in everything["workflows"]), everything
    both = listing("--type", type_a, "--type", type_b, "--all")
    assert [w["workflow_id"] for w in both["workflows"]] == sorted(ids_a + ids_b), both

    # Status filters (nothing has closed: no supervisor runs these types).
    running = listing("--type", type_b, "--status", "RUNNING")
    assert [w["workflow_id"] for w in running["workflows"]] == ids_b, running
    assert listing("--type", type_b, "--status", "COMPLETED", "--status", "FAILED",
                   "--all")["workflows"] == []
    failed(coda("workflow", "list", "--status", "SLEEPING", address=cluster.address), 2,
           "--status", "SLEEPING")

    # Human output: a header, one row per workflow, a count and the token to continue with.
    human = ok(coda("workflow", "list", "--type", type_b, "--page-size", "2",
                    address=cluster.address)).splitlines()
    assert human[0].split()[:3] == ["WORKFLOW", "ID", "TYPE"], human
    assert [line.split()[0] for line in human[1:3]] == ids_b[:2], human
    assert all(type_b in line and "RUNNING" in line for line in human[1:3]), human
    assert len(human) == 5 and human[3] == "(2 workflows)", human
    assert human[4].startswith("next page: --page-token "), human
    human_token = human[4].split()[-1]
    rest = listing("--type", type_b, "--page-size", "2", "--page-token", human_token)
    assert [w["workflow_id"] for w in rest["workflows"]] == ids_b[2:], rest

    # A token only continues the listing it came from.
    failed(coda("workflow", "list", "--type", type_a, "--page-token", human_token,
                address=cluster.address), 1, "INVALID_ARGUMENT", "page_token")


# --- cluster status and addresses ------------------------------------------------------------

def test_cluster_status_human_and_json(cluster):
    status = as_json(coda("--json", "cluster", "status", address=cluster.address))
    assert status["shard_count"] == SHARDS, status
    assert [s["shard"] for s in status["shards"]] == list(range(SHARDS)), status
    clients = {n["client"] for n in cluster.nodes}
    for s in status["shards"]:
        assert len(s["replicas"]) == 3, s
        assert sorted(r["node_id"] for r in s["replicas"]) == ["n1", "n2", "n3"], s
        roles = [r["role"] for r in s["replicas"]]
        assert roles.count("leader") == 1, s
        assert set(roles) <= {"leader", "follower", "candidate"}, s
        leader = next(r for r in s["replicas"] if r["role"] == "leader")
        assert s["leader"] == leader["address"] and s["leader"] in clients, s
        assert all(r["reachable"] for r in s["replicas"]), s

    lines = ok(coda("cluster", "status", address=cluster.address)).splitlines()
    assert re.fullmatch(rf"{SHARDS} shards \(answered by n[123]\)", lines[0]), lines
    shard_lines = [line for line in lines if line.startswith("shard ")]
    assert len(shard_lines) == SHARDS, lines
    for shard, line in enumerate(shard_lines):
        match = re.match(r"shard +(\d+) +leader (\S+) ", line)
        assert match and int(match.group(1)) == shard, line
        assert match.group(2) in clients and "NO LEADER" not in line, line
    replica_lines = [line for line in lines[1:] if line.startswith("    ")]
    assert len(replica_lines) == 3 * SHARDS, lines
    assert sum(" leader " in line for line in replica_lines) == SHARDS, lines


def test_address_flag(cluster):
    # --address alone, naming a single node: any node answers.
    one = cluster.nodes[2]["client"]
    status = as_json(coda("--address", one, "--json", "cluster", "status"))
    assert status["answered_by"] == "n3" and status["shard_count"] == SHARDS, status
    # --address wins over CODA_ADDRESS (which here names nobody: using it would hang 30 s).
    wid = uid("cli-flag")
    out = ok(coda("--address", cluster.address, "workflow", "start", "cli_type", "--id", wid,
                  address=dead_address()))
    assert out.startswith(f"started {wid} run "), out


def test_no_or_malformed_address_is_a_usage_error():
    for argv in (("cluster", "status"), ("workflow", "describe", "x"),
                 ("workflow", "start", "t", "--id", "x")):
        failed(coda(*argv, address=None), 2, "CODA_ADDRESS", "--address")
    failed(coda("cluster", "status", address=""), 2, "CODA_ADDRESS")
    failed(coda("--address", "not-an-address", "cluster", "status"), 2, "not-an-address",
           "host:port")
    failed(coda("workflow", "list", address=" , "), 2, "CODA_ADDRESS")


def test_unreachable_address_fails_clearly():
    """--timeout bounds the retries; the error names the address and says it can't connect."""
    address = dead_address()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "coda.client.cli", "--address", address,
                           "--timeout", "3", "cluster", "status"], env=_env(None),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=UNREACHABLE_BOUND_S * 2)
    elapsed = time.monotonic() - started
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert out == "" and "Traceback" not in err, (out, err)
    assert err.startswith("error: "), err
    assert address in err and "can't connect" in err, err
    assert elapsed < UNREACHABLE_BOUND_S, elapsed


# --- coda-flow serve -------------------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--node", "malformed"], ["--node must be ID=", "malformed"]),
    (["--node-id", "n9", "--shards", "2", "--data-dir", "{tmp}",
      "--node", "n1=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"], ["n9", "not among"]),
    (["--node-id", "n1", "--shards", "0", "--data-dir", "{tmp}",
      "--node", "n1=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"], ["shards", "got 0"]),
])
def test_serve_rejects_bad_flags(tmp_path, argv, words):
    data_dir = tmp_path / "data"
    argv = [a.replace("{tmp}", str(data_dir)) for a in argv]
    env = dict(os.environ, CODA_CLUSTER_SECRET="s3cret-" + "x" * 20)
    result = subprocess.run([sys.executable, "-m", "coda.flow.cli", "serve", *argv], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S)
    failed(result, 2, "bad configuration", *words)
    assert not data_dir.exists()  # refused before touching the disk
