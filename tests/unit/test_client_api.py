"""The client API without a server: argument checks at the call site, the mapping from a
run's closing status to result()/errors, the long-poll loop, history paging, and the CLI's
new commands. Client._call is replaced by a fake that records requests and answers from a
script, so nothing here opens a connection (the real-cluster tests live in integration/)."""

from __future__ import annotations

import asyncio
import base64
import json
import math

import pytest
from click.testing import CliRunner

import coda
from coda import errors
from coda.api import flow_pb2 as pb
from coda.client import cli
from coda.client import client as client_module
from coda.client.client import (Client, SyncClient, SyncWorkflowHandle, WorkflowHandle,
                                workflow_result, workflow_to_dict)
from coda.flow import model
from coda.storage import codec

ADDRESS = "127.0.0.1:1"  # nothing listens: any real RPC would fail


class FakeServer:
    """Stands in for Client._call: records (method, request, options), answers from
    `answers[method]` (a list consumed in order; the last one repeats)."""

    def __init__(self):
        self.calls: list[tuple[str, object, dict]] = []
        self.answers: dict[str, list] = {}

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.calls]

    async def call(self, client, method, request, **options):
        self.calls.append((method, request, options))
        queue = self.answers[method]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def server(monkeypatch):
    fake = FakeServer()

    async def call(self, method, request, **options):
        return await fake.call(self, method, request, **options)

    monkeypatch.setattr(Client, "_call", call)
    monkeypatch.setattr(client_module, "WAIT_POLL_INTERVAL_MIN_S", 0.0)
    return fake


def run(coro):
    return asyncio.run(coro)


def info(status: str, *, result=None, failure: str = "", run_id: str = "r1",
         workflow_id: str = "wf-1") -> pb.DescribeWorkflowResponse:
    return pb.DescribeWorkflowResponse(workflow=pb.WorkflowInfo(
        workflow_id=workflow_id, run_id=run_id, workflow_type="t", status=status,
        result=codec.pack(result) if status == model.COMPLETED else b"", failure=failure))


def started(run_id: str = "r1") -> pb.StartWorkflowResponse:
    return pb.StartWorkflowResponse(run_id=run_id, started=True)


async def start(**kwargs):
    async with Client(ADDRESS) as client:
        return await client.start_workflow(**kwargs)


@coda.workflow(name="timed", execution_timeout=90)
async def timed_workflow(n):
    return n


@coda.workflow(name="untimed")
async def untimed_workflow():
    return None


@coda.task(name="a_task")
async def a_task():
    return None


# --- start_workflow: checked before any RPC --------------------------------------------

@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "10", True, [1]])
def test_a_bad_execution_timeout_is_refused_before_any_rpc(server, timeout):
    with pytest.raises(errors.InvalidArgument, match="execution_timeout must be a positive "
                       "number of seconds") as caught:
        run(start(workflow_type="t", args={}, execution_timeout=timeout))
    assert caught.value.details["field"] == "execution_timeout"
    assert server.calls == []


def test_an_absurdly_large_execution_timeout_is_refused(server):
    with pytest.raises(errors.InvalidArgument, match="too large"):
        run(start(workflow_type="t", execution_timeout=1e300))
    assert server.calls == []


@pytest.mark.parametrize("args,words", [
    ([1, 2], "got list"), ("x=1", "got str"), ((("a", 1),), "got tuple"),
    ({1: "one"}, "keys must be argument names"),
])
def test_args_that_are_not_keyword_arguments_are_refused(server, args, words):
    with pytest.raises(errors.InvalidArgument, match=words) as caught:
        run(start(workflow_type="t", args=args))
    assert caught.value.details["field"] == "args"
    assert server.calls == []


def test_args_that_msgpack_cannot_carry_are_refused(server):
    with pytest.raises(errors.PayloadError, match="can't be encoded as msgpack"):
        run(start(workflow_type="t", args={"x": object()}))
    assert server.calls == []


def test_execution_timeout_travels_in_milliseconds(server):
    server.answers["StartWorkflow"] = [started()]
    for seconds, millis in [(None, 0), (1.5, 1500), (0.0001, 1), (2, 2000)]:
        run(start(workflow_type="t", execution_timeout=seconds))
        assert server.calls[-1][1].execution_timeout_ms == millis, seconds


def test_a_workflow_function_gives_its_name_and_default_timeout(server):
    server.answers["StartWorkflow"] = [started()]
    handle = run(start(workflow_type=timed_workflow, args={"n": 1}, workflow_id="w"))
    assert isinstance(handle, WorkflowHandle) and handle.run_id == "r1"
    request = server.calls[-1][1]
    assert (request.workflow_type, request.execution_timeout_ms) == ("timed", 90_000)
    assert codec.unpack(request.input) == {"n": 1}

    run(start(workflow_type=timed_workflow, execution_timeout=5))  # explicit wins
    request = server.calls[-1][1]
    assert request.execution_timeout_ms == 5000
    assert request.workflow_id.startswith("timed-")  # generated from the name

    run(start(workflow_type=untimed_workflow))
    assert server.calls[-1][1].execution_timeout_ms == 0


@pytest.mark.parametrize("workflow_type,words", [
    (a_task, "a @coda.task function"), (len, "built-in function len"), (None, "None"),
])
def test_something_other_than_a_workflow_type_is_refused(server, workflow_type, words):
    with pytest.raises(errors.InvalidArgument, match="workflow type name or a @coda.workflow") \
            as caught:
        run(start(workflow_type=workflow_type))
    assert words in caught.value.message
    assert server.calls == []


# --- closing status -> result or error -------------------------------------------------

@pytest.mark.parametrize("value", [None, 42, "done", {"rows": [1, 2], "blob": b"\x00"}])
def test_completed_gives_the_decoded_result(value):
    assert workflow_result(workflow_to_dict(info(model.COMPLETED, result=value).workflow)) == value


@pytest.mark.parametrize("status,error_class,code,verb", [
    (model.FAILED, errors.WorkflowFailedError, "WORKFLOW_FAILED", "failed"),
    (model.CANCELLED, errors.WorkflowCancelledError, "WORKFLOW_CANCELLED", "was cancelled"),
    (model.TERMINATED, errors.WorkflowTerminatedError, "WORKFLOW_TERMINATED", "was terminated"),
    (model.TIMED_OUT, errors.WorkflowTimedOutError, "WORKFLOW_TIMED_OUT", "timed out"),
    (model.CONTINUED_AS_NEW, errors.WorkflowContinuedAsNewError, "WORKFLOW_CONTINUED_AS_NEW",
     "continued as new (its result is the new run's)"),
])
def test_every_unsuccessful_status_raises_its_error(status, error_class, code, verb):
    described = workflow_to_dict(info(status, failure="ValueError: boom").workflow)
    with pytest.raises(error_class) as caught:
        workflow_result(described)
    err = caught.value
    assert isinstance(err, errors.WorkflowError) and isinstance(err, errors.CodaError)
    assert err.code == code and err.definite and not err.retryable
    assert err.message == f"workflow wf-1 run r1 {verb}: ValueError: boom"
    assert (err.workflow_id, err.run_id, err.failure) == ("wf-1", "r1", "ValueError: boom")
    assert err.details["status"] == status


def test_every_closed_status_is_mapped():
    assert set(client_module.ERROR_BY_STATUS) | {model.COMPLETED} == set(model.CLOSED_STATUSES)


def test_a_failure_without_text_still_reads_well():
    with pytest.raises(errors.WorkflowTerminatedError) as caught:
        workflow_result(workflow_to_dict(info(model.TERMINATED).workflow))
    assert caught.value.message == "workflow wf-1 run r1 was terminated"
    assert caught.value.failure is None


def test_a_running_workflow_has_no_result_yet():
    with pytest.raises(errors.InvalidArgument, match="'RUNNING', not a closed status"):
        workflow_result(workflow_to_dict(info(model.RUNNING).workflow))


# --- result(): the long-poll loop ------------------------------------------------------

def test_result_polls_until_the_run_closes(server):
    server.answers["WaitWorkflow"] = [info(model.RUNNING), info(model.RUNNING),
                                      info(model.COMPLETED, result={"ok": True})]

    async def go():
        async with Client(ADDRESS) as client:
            return await client.get_workflow_handle("wf-1", "r1").result()

    assert run(go()) == {"ok": True}
    assert server.methods() == ["WaitWorkflow"] * 3
    for _, request, options in server.calls:
        assert (request.workflow_id, request.run_id) == ("wf-1", "r1")
        assert request.wait_ms == client_module.WAIT_POLL_MS
        assert options["retry_indeterminate"] is True
        assert options["wait_s"] == client_module.WAIT_POLL_MS / 1000


def test_result_raises_the_error_of_the_closing_status(server):
    server.answers["WaitWorkflow"] = [info(model.FAILED, failure="ZeroDivisionError")]

    async def go():
        async with Client(ADDRESS) as client:
            await client.get_workflow_handle("wf-1").result()

    with pytest.raises(errors.WorkflowFailedError, match="ZeroDivisionError"):
        run(go())
    assert server.calls[0][1].run_id == ""  # no run id: the current run


def test_result_gives_up_when_the_callers_timeout_passes(server, monkeypatch):
    server.answers["WaitWorkflow"] = [info(model.RUNNING)]
    monkeypatch.setattr(client_module, "WAIT_POLL_INTERVAL_MIN_S", 0.05)  # paced polls

    async def go(timeout):
        async with Client(ADDRESS) as client:
            await client.get_workflow_handle("wf-1", "r1").result(timeout=timeout)

    with pytest.raises(errors.WaitTimeout, match="still RUNNING after waiting 0 s") as caught:
        run(go(0))
    assert caught.value.code == "WAIT_TIMEOUT" and not caught.value.retryable
    assert caught.value.details["run_id"] == "r1"
    assert [c[1].wait_ms for c in server.calls] == [0]  # polled once, not held

    server.calls.clear()
    with pytest.raises(errors.WaitTimeout):
        run(go(0.3))
    assert 2 <= len(server.calls) <= 8, len(server.calls)
    assert all(c[1].wait_ms <= 300 for c in server.calls)


@pytest.mark.parametrize("timeout", [-1, math.nan, "5", True])
def test_a_bad_wait_timeout_is_refused(server, timeout):
    async def go():
        async with Client(ADDRESS) as client:
            await client.get_workflow_handle("wf-1").result(timeout=timeout)

    with pytest.raises(errors.InvalidArgument, match="timeout must be a number of seconds"):
        run(go())
    assert server.calls == []


def test_wait_workflow_is_one_long_poll(server):
    server.answers["WaitWorkflow"] = [info(model.RUNNING)]

    async def go(wait_ms):
        async with Client(ADDRESS) as client:
            return await client.wait_workflow("wf-1", "r1", wait_ms)

    assert run(go(1500))["status"] == model.RUNNING
    assert server.calls[0][2]["wait_s"] == 1.5
    for bad in (-1, 2**32, 1.5, None):
        with pytest.raises(errors.InvalidArgument, match="wait_ms must be an integer"):
            run(go(bad))
    assert len(server.calls) == 1


def test_a_long_poll_gets_time_beyond_a_normal_call(monkeypatch):
    seen = []

    class Stub:
        async def WaitWorkflow(self, request, timeout):
            seen.append(timeout)
            return info(model.RUNNING)

    async def go():
        async with Client(ADDRESS, timeout_s=60) as client:
            monkeypatch.setattr(client, "_stub", lambda address: Stub())
            monkeypatch.setattr(client, "_leader_for", _no_leader)
            await client.wait_workflow("wf-1", "r1", 20_000)

    run(go())
    assert seen == [pytest.approx(client_module.CALL_TIMEOUT_S + 20, abs=0.5)]


async def _no_leader(workflow_id):
    return None


# --- cancel, terminate, history --------------------------------------------------------

@pytest.mark.parametrize("method,rpc", [("cancel", "CancelWorkflow"),
                                        ("terminate", "TerminateWorkflow")])
def test_cancel_and_terminate_send_a_request_id_and_may_be_retried(server, method, rpc):
    answer_class = getattr(pb, f"{rpc}Response")
    server.answers[rpc] = [answer_class(run_id="r1")]

    async def go():
        async with Client(ADDRESS) as client:
            handle = client.get_workflow_handle("wf-1", "r1")
            return await getattr(handle, method)(reason="operator said so")

    assert run(go()) == "r1"
    assert run(go()) == "r1"
    (_, first, options), (_, second, _) = server.calls
    assert (first.workflow_id, first.run_id, first.reason) == ("wf-1", "r1", "operator said so")
    assert first.request_id and first.request_id != second.request_id
    assert options["retry_indeterminate"] is True and options["workflow_id"] == "wf-1"


def test_a_reason_must_be_text(server):
    async def go():
        async with Client(ADDRESS) as client:
            await client.cancel_workflow("wf-1", reason=3)

    with pytest.raises(errors.InvalidArgument, match="reason must be a string"):
        run(go())
    assert server.calls == []


def event(event_id: int, type_: str, **fields) -> bytes:
    return codec.pack({"event_id": event_id, "type": type_, "time_ms": 1000 + event_id, **fields})


def test_history_pages_through_one_run(server):
    server.answers["GetWorkflowHistory"] = [
        pb.GetWorkflowHistoryResponse(run_id="r7", more=True, events=[
            event(1, "WorkflowExecutionStarted", input=codec.pack({"n": 1})),
            event(2, "TaskScheduled", key="k", task="a_task")]),
        pb.GetWorkflowHistoryResponse(run_id="r7", more=False, events=[
            event(3, "TaskCompleted", key="k", result=codec.pack(5))]),
    ]

    async def go():
        async with Client(ADDRESS) as client:
            return await client.get_workflow_handle("wf-1").history()

    events = run(go())
    assert [e["event_id"] for e in events] == [1, 2, 3]
    assert events[0]["input"] == codec.pack({"n": 1})  # payloads stay msgpack bytes
    first, second = (request for _, request, _ in server.calls)
    assert (first.run_id, first.after_event_id) == ("", 0)
    assert (second.run_id, second.after_event_id) == ("r7", 2)  # pinned to the first run


def test_history_stops_on_an_empty_page_even_if_more_is_claimed(server):
    server.answers["GetWorkflowHistory"] = [pb.GetWorkflowHistoryResponse(run_id="r", more=True)]

    async def go():
        async with Client(ADDRESS) as client:
            return await client.workflow_history("wf-1")

    assert run(go()) == []
    assert len(server.calls) == 1


def test_a_malformed_event_is_reported(server):
    server.answers["GetWorkflowHistory"] = [pb.GetWorkflowHistoryResponse(
        run_id="r", events=[codec.pack(["not", "a", "map"])])]

    async def go():
        async with Client(ADDRESS) as client:
            return await client.workflow_history("wf-1")

    with pytest.raises(errors.Internal, match="not a map with an event_id"):
        run(go())


# --- SyncClient and its handle ---------------------------------------------------------

def test_sync_handle_blocks_on_the_same_methods(server):
    server.answers["StartWorkflow"] = [started("r9")]
    server.answers["WaitWorkflow"] = [info(model.RUNNING, run_id="r9"),
                                      info(model.COMPLETED, result=[1, 2], run_id="r9")]
    server.answers["CancelWorkflow"] = [pb.CancelWorkflowResponse(run_id="r9")]
    server.answers["GetWorkflowHistory"] = [pb.GetWorkflowHistoryResponse(
        run_id="r9", events=[event(1, "WorkflowExecutionStarted")])]
    with SyncClient(ADDRESS) as client:
        handle = client.start_workflow(timed_workflow, {"n": 1}, workflow_id="wf-1")
        assert isinstance(handle, SyncWorkflowHandle)
        assert (handle.workflow_id, handle.run_id, handle.started) == ("wf-1", "r9", True)
        assert handle.result(timeout=5) == [1, 2]
        assert handle.cancel("stop") == "r9"
        assert [e["type"] for e in handle.history()] == ["WorkflowExecutionStarted"]
        again = client.get_workflow_handle("wf-1")
        assert isinstance(again, SyncWorkflowHandle) and again.run_id == ""
    assert server.methods() == ["StartWorkflow", "WaitWorkflow", "WaitWorkflow",
                                "CancelWorkflow", "GetWorkflowHistory"]


def test_sync_client_refuses_bad_arguments_at_the_call(server):
    with SyncClient(ADDRESS) as client:
        with pytest.raises(errors.InvalidArgument, match="execution_timeout"):
            client.start_workflow("t", {}, execution_timeout=-5)
        with pytest.raises(errors.InvalidArgument, match="got list"):
            client.start_workflow("t", [1])
    assert server.calls == []


# --- CLI -------------------------------------------------------------------------------

def invoke(*argv: str):
    return CliRunner().invoke(cli.main, ["--address", ADDRESS, *argv])


def test_cli_help_lists_the_new_commands():
    workflow_help = invoke("workflow", "--help").output
    for command in ("cancel", "terminate", "history", "result", "start", "describe", "list"):
        assert f"  {command} " in workflow_help, (command, workflow_help)
    assert "supervisor" in invoke("--help").output
    start_help = invoke("workflow", "start", "--help").output
    assert "--wait" in start_help and "--execution-timeout" in start_help
    run_help = invoke("supervisor", "run", "--help").output
    for option in ("--workers", "--slots", "--build-id", "--health-port", "--supervisor-id"):
        assert option in run_help, option
    assert "--reason" in invoke("workflow", "cancel", "--help").output
    assert "--reason" in invoke("workflow", "terminate", "--help").output
    assert "--json" in invoke("workflow", "history", "--help").output
    assert "--timeout" in invoke("workflow", "result", "--help").output


def test_cli_start_refuses_args_that_are_not_an_object(server):
    result = invoke("workflow", "start", "t", "--args", "[1, 2]")
    assert result.exit_code == 2 and "JSON object" in result.output, result.output
    result = invoke("workflow", "start", "t", "--execution-timeout", "0")
    assert result.exit_code == 2 and "--execution-timeout" in result.output, result.output
    assert server.calls == []


def test_cli_start_wait_prints_the_result(server):
    server.answers["StartWorkflow"] = [started("r1")]
    server.answers["WaitWorkflow"] = [info(model.COMPLETED, result={"n": 2})]
    result = invoke("workflow", "start", "t", "--id", "wf-1", "--wait",
                    "--execution-timeout", "2.5")
    assert result.exit_code == 0, result.output
    assert result.stdout == 'started wf-1 run r1\n{"n":2}\n'
    assert server.calls[0][1].execution_timeout_ms == 2500

    result = invoke("--json", "workflow", "start", "t", "--id", "wf-1", "--wait")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"workflow_id": "wf-1", "run_id": "r1",
                                         "started": True, "result": {"n": 2}}


def test_cli_result_exits_1_with_the_failure(server):
    server.answers["WaitWorkflow"] = [info(model.FAILED, failure="ValueError: bad row")]
    result = invoke("workflow", "result", "wf-1", "--timeout", "5")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: WORKFLOW_FAILED: workflow wf-1 run r1 failed: " \
                            "ValueError: bad row\n"


def test_cli_result_prints_json(server):
    server.answers["WaitWorkflow"] = [info(model.COMPLETED, result={"blob": b"\x01\x02"})]
    result = invoke("workflow", "result", "wf-1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "workflow_id": "wf-1", "run_id": "r1", "status": "COMPLETED",
        "result": {"blob": {"base64": base64.b64encode(b"\x01\x02").decode()}}}


def test_cli_result_timeout_is_an_error(server):
    server.answers["WaitWorkflow"] = [info(model.RUNNING)]
    result = invoke("workflow", "result", "wf-1", "--timeout", "0")
    assert result.exit_code == 1 and "WAIT_TIMEOUT" in result.stderr, result.output


def test_cli_cancel_and_terminate(server):
    server.answers["CancelWorkflow"] = [pb.CancelWorkflowResponse(run_id="r1")]
    server.answers["TerminateWorkflow"] = [pb.TerminateWorkflowResponse(run_id="r1")]
    result = invoke("workflow", "cancel", "wf-1", "--reason", "done with it")
    assert (result.exit_code, result.stdout) == (0, "cancel requested for wf-1 run r1\n")
    assert server.calls[-1][1].reason == "done with it"
    result = invoke("workflow", "terminate", "wf-1", "--json")
    assert json.loads(result.stdout) == {"workflow_id": "wf-1", "run_id": "r1"}


def test_cli_supervisor_run_needs_an_address():
    result = CliRunner(env={"CODA_ADDRESS": None}).invoke(cli.main, ["supervisor", "run", "m"])
    assert result.exit_code == 2 and "no Flow address" in result.output, result.output


def test_cli_supervisor_run_calls_run_supervisor(monkeypatch):
    import sys
    import types
    calls = []
    fake = types.ModuleType("coda.supervisor.supervisor")
    fake.run_supervisor = lambda addresses, module, **options: calls.append(
        (addresses, module, options)) or 3
    monkeypatch.setitem(sys.modules, "coda.supervisor.supervisor", fake)
    result = CliRunner().invoke(cli.main, [
        "--address", "127.0.0.1:7100,127.0.0.1:7101", "supervisor", "run", "my.module",
        "--workers", "2", "--slots", "8", "--build-id", "b1", "--health-port", "9000",
        "--supervisor-id", "s1"])
    assert result.exit_code == 3, result.output
    assert calls == [(["127.0.0.1:7100", "127.0.0.1:7101"], "my.module",
                      {"workers": 2, "slots": 8, "build_id": "b1", "health_port": 9000,
                       "supervisor_id": "s1"})]


# --- history JSON rendering ------------------------------------------------------------

def test_history_json_decodes_payload_bytes():
    rendered = cli.event_to_json({
        "event_id": 1, "type": "TaskCompleted", "time_ms": 5,
        "input": codec.pack({"project_id": "p1", "raw": b"\xff\x00"}),
        "result": b"\xc1",                        # never valid msgpack
        "args": codec.pack([1, "two"]),
        "details": b"",                           # empty: not msgpack either
        "error": {"type": "ValueError", "message": "m"},
    })
    assert rendered == {
        "event_id": 1, "type": "TaskCompleted", "time_ms": 5,
        "input": {"project_id": "p1", "raw": {"base64": base64.b64encode(b"\xff\x00").decode()}},
        "result": {"base64": base64.b64encode(b"\xc1").decode()},
        "args": [1, "two"],
        "details": {"base64": ""},
        "error": {"type": "ValueError", "message": "m"},
    }
    json.dumps(rendered)  # and it is JSON


def test_history_json_on_the_command_line(server):
    server.answers["GetWorkflowHistory"] = [pb.GetWorkflowHistoryResponse(run_id="r1", events=[
        event(1, "WorkflowExecutionStarted", input=codec.pack({"n": 1}), workflow_type="t"),
        event(2, "TaskCompleted", key="k", result=b"\xc1")])]
    result = invoke("workflow", "history", "wf-1", "--json")
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert events[0]["input"] == {"n": 1}
    assert events[1]["result"] == {"base64": "wQ=="}
    human = invoke("workflow", "history", "wf-1")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()  # a timeline: a header, then one line an event
    assert len(lines) == 3 and lines[0].startswith("run started ") and "2 events" in lines[0]
    assert "WorkflowExecutionStarted" in lines[1] and "+    0.000s" in lines[1]
    assert 'input={"n":1}' in lines[1] and 'result={"base64":"wQ=="}' in lines[2]
