"""A client that runs inside a network namespace and answers JSON lines.

Run in the namespace (`ip netns exec NS python client_probe.py`), it reads one JSON request
per line on stdin and writes one JSON result per line on stdout, serving requests
concurrently (a read that hangs on an isolated leader doesn't hold up status polls):

    {"id": 1, "op": "describe", "target": "10.77.5.11:40000", "workflow_id": "a",
     "timeout": 12}
    -> {"id": 1, "ok": false, "error": {"code": "INDETERMINATE", "grpc": "UNKNOWN", ...},
        "t0": <monotonic>, "t1": <monotonic>}

ops: local_status (Peer.GetLocalStatus of one node), cluster_status, start, describe.
`target` is one node: the call is a single gRPC attempt with deadline `timeout` and its
outcome is reported as it came (that is what a test of one node's answers needs). With
"retry": true, `target` may list several nodes and the SDK client (coda.Client) retries
what is safe to retry for up to `timeout` seconds.

t0/t1 are CLOCK_MONOTONIC, which namespaces share with the test process.

`Probe` (below) is the test-side driver: it starts the process and matches results to
requests by id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

OPS = ("local_status", "cluster_status", "start", "describe")


# === inside the namespace ===============================================================
# grpc and coda are imported inside these functions: the test side needs neither.

def _api():
    from coda.api import flow_pb2, flow_pb2_grpc
    return flow_pb2, flow_pb2_grpc


def _local_status_to_dict(answer) -> dict:
    return {"node_id": answer.node_id, "replicas": [
        {"role": r.role, "term": r.term, "commit_index": r.commit_index,
         "applied_index": r.applied_index, "leader": r.leader or None}
        for r in answer.replicas]}


# --- one gRPC attempt per request: handler(channel, req, timeout) -----------------------

async def _once_local_status(channel, req: dict, timeout: float):
    pb, pb_grpc = _api()
    answer = await pb_grpc.PeerStub(channel).GetLocalStatus(
        pb.GetLocalStatusRequest(), timeout=timeout)
    return _local_status_to_dict(answer)


async def _once_cluster_status(channel, req: dict, timeout: float):
    from coda.client.client import cluster_status_to_dict
    pb, pb_grpc = _api()
    return cluster_status_to_dict(await pb_grpc.FlowStub(channel).GetClusterStatus(
        pb.GetClusterStatusRequest(), timeout=timeout))


async def _once_start(channel, req: dict, timeout: float):
    from coda.client.client import REUSE_ENUM
    from coda.flow import limits
    from coda.storage import codec
    pb, pb_grpc = _api()
    answer = await pb_grpc.FlowStub(channel).StartWorkflow(pb.StartWorkflowRequest(
        workflow_id=req["workflow_id"], workflow_type=req["workflow_type"],
        input=codec.encode_payload(req.get("args") or {}, what="args",
                                   limit_bytes=limits.payload_bytes_default),
        reuse_policy=REUSE_ENUM[req.get("reuse_policy", "ALLOW_DUPLICATE")],
        allow_undeclared_type=True,
        request_id=req.get("request_id") or uuid.uuid4().hex), timeout=timeout)
    return {"run_id": answer.run_id, "started": answer.started, "shard": answer.shard}


async def _once_describe(channel, req: dict, timeout: float):
    from coda.client.client import workflow_to_dict
    pb, pb_grpc = _api()
    answer = await pb_grpc.FlowStub(channel).DescribeWorkflow(pb.DescribeWorkflowRequest(
        workflow_id=req["workflow_id"], run_id=req.get("run_id") or ""), timeout=timeout)
    return workflow_to_dict(answer.workflow)


_ONCE = {"local_status": _once_local_status, "cluster_status": _once_cluster_status,
         "start": _once_start, "describe": _once_describe}


# --- through the SDK client, with its retries: handler(client, req) ---------------------

async def _retrying_cluster_status(client, req: dict):
    return await client.cluster_status()


async def _retrying_start(client, req: dict):
    handle = await client.start_workflow(
        req["workflow_type"], req.get("args") or {}, workflow_id=req["workflow_id"],
        reuse_policy=req.get("reuse_policy", "ALLOW_DUPLICATE"),
        request_id=req.get("request_id"))
    return {"run_id": handle.run_id, "started": handle.started}


async def _retrying_describe(client, req: dict):
    return await client.describe_workflow(req["workflow_id"], req.get("run_id"))


_RETRYING = {"cluster_status": _retrying_cluster_status, "start": _retrying_start,
             "describe": _retrying_describe}


def _error_of(exc: Exception, req: dict) -> dict:
    """The "error" field of a failed request's result."""
    import grpc

    from coda.errors import CodaError
    from coda.flow.wire import error_from_rpc

    if isinstance(exc, grpc.aio.AioRpcError):
        err = error_from_rpc(exc, target=req.get("target", ""))
        return {"code": err.code, "type": type(err).__name__, "grpc": exc.code().name,
                "message": err.message, "definite": err.definite,
                "details": {k: v for k, v in err.details.items()}}
    if isinstance(exc, CodaError):
        return {"code": exc.code, "type": type(exc).__name__, "grpc": None,
                "message": exc.message, "definite": exc.definite,
                "details": {k: v for k, v in exc.details.items()}}
    # a bug in the probe or a bad request: report, keep serving
    return {"code": "PROBE_ERROR", "type": type(exc).__name__, "grpc": None,
            "message": repr(exc), "definite": False, "details": {}}


class _Server:
    """Reads requests from stdin, runs each as its own task, writes results as they end."""

    def __init__(self):
        self.channels = {}
        self.out_lock = threading.Lock()

    def channel(self, address: str):
        import grpc

        from coda.flow import limits

        if address not in self.channels:
            self.channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
                ("grpc.enable_retries", 0),
                ("grpc.enable_http_proxy", 0)])
        return self.channels[address]

    async def once(self, req: dict):
        target, timeout = req["target"], float(req.get("timeout", 5.0))
        op = req["op"]
        handler = _ONCE.get(op)
        if handler is None:
            raise ValueError(f"unknown op {op!r}; one of {OPS}")
        return await handler(self.channel(target), req, timeout)

    async def with_retries(self, req: dict):
        from coda.client.client import Client

        timeout = float(req.get("timeout", 30.0))
        async with Client(req["target"], timeout_s=timeout, allow_undeclared_types=True) as client:
            op = req["op"]
            handler = _RETRYING.get(op)
            if handler is None:
                raise ValueError(f"op {op!r} has no retrying form")
            return await handler(client, req)

    def emit(self, result: dict) -> None:
        line = json.dumps(result, default=repr)
        with self.out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def handle(self, req: dict) -> None:
        result = {"id": req.get("id"), "op": req.get("op"), "target": req.get("target"),
                  "t0": time.monotonic()}
        try:
            value = await (self.with_retries(req) if req.get("retry") else self.once(req))
            result.update(ok=True, value=value)
        except Exception as exc:  # every failure becomes a result; keep serving
            result.update(ok=False, error=_error_of(exc, req))
        result["t1"] = time.monotonic()
        self.emit(result)

    async def main(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            task = loop.create_task(self.handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        for ch in self.channels.values():
            await ch.close()


def _serve() -> None:
    import asyncio

    asyncio.run(_Server().main())


# === the test side ======================================================================

class Probe:
    """Drives one client_probe process running in `ns` (via netns.Net.run_in)."""

    def __init__(self, net, ns: str, log_path: str | None = None):
        argv = net.run_in(ns, [sys.executable, os.path.abspath(__file__)])
        self._stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        net.track(self.proc)
        self._next_id = 0
        self._results: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.history: list[dict] = []   # every result, in completion order

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                result = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._results[result["id"]] = result
                self.history.append(result)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def submit(self, op: str, **request) -> int:
        assert op in OPS, op
        with self._cond:
            self._next_id += 1
            rid = self._next_id
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **request}) + "\n")
        self.proc.stdin.flush()
        return rid

    def result(self, rid: int, wait_s: float = 60.0) -> dict:
        deadline = time.monotonic() + wait_s
        with self._cond:
            while rid not in self._results:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"probe request {rid}: no result after {wait_s} s "
                                         f"(probe exit code {self.proc.poll()})")
                self._cond.wait(min(left, 0.5))
            return self._results[rid]

    def done(self, rid: int) -> bool:
        with self._cond:
            return rid in self._results

    def call(self, op: str, wait_s: float | None = None, **request) -> dict:
        timeout = float(request.get("timeout", 30.0 if request.get("retry") else 5.0))
        return self.result(self.submit(op, **request), wait_s or timeout + 10.0)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self._stderr is not subprocess.DEVNULL:
            self._stderr.close()


if __name__ == "__main__":
    _serve()
