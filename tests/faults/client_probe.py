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

def _serve() -> None:
    import asyncio

    import grpc

    from coda.api import flow_pb2 as pb
    from coda.api import flow_pb2_grpc as pb_grpc
    from coda.client.client import REUSE_ENUM, Client, cluster_status_to_dict, workflow_to_dict
    from coda.errors import CodaError
    from coda.flow import limits
    from coda.flow.wire import error_from_rpc
    from coda.storage import codec

    channels: dict[str, grpc.aio.Channel] = {}
    out_lock = threading.Lock()

    def channel(address: str) -> grpc.aio.Channel:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
                ("grpc.enable_retries", 0),
                ("grpc.enable_http_proxy", 0)])
        return channels[address]

    def local_status_to_dict(answer) -> dict:
        return {"node_id": answer.node_id, "replicas": [
            {"role": r.role, "term": r.term, "commit_index": r.commit_index,
             "applied_index": r.applied_index, "leader": r.leader or None}
            for r in answer.replicas]}

    async def once(req: dict):
        target, timeout = req["target"], float(req.get("timeout", 5.0))
        op = req["op"]
        if op == "local_status":
            answer = await pb_grpc.PeerStub(channel(target)).GetLocalStatus(
                pb.GetLocalStatusRequest(), timeout=timeout)
            return local_status_to_dict(answer)
        flow = pb_grpc.FlowStub(channel(target))
        if op == "cluster_status":
            return cluster_status_to_dict(await flow.GetClusterStatus(
                pb.GetClusterStatusRequest(), timeout=timeout))
        if op == "start":
            answer = await flow.StartWorkflow(pb.StartWorkflowRequest(
                workflow_id=req["workflow_id"], workflow_type=req["workflow_type"],
                input=codec.encode_payload(req.get("args") or {}, what="args",
                                           limit_bytes=limits.payload_bytes_default),
                reuse_policy=REUSE_ENUM[req.get("reuse_policy", "ALLOW_DUPLICATE")],
                request_id=req.get("request_id") or uuid.uuid4().hex), timeout=timeout)
            return {"run_id": answer.run_id, "started": answer.started, "shard": answer.shard}
        if op == "describe":
            answer = await flow.DescribeWorkflow(pb.DescribeWorkflowRequest(
                workflow_id=req["workflow_id"], run_id=req.get("run_id") or ""), timeout=timeout)
            return workflow_to_dict(answer.workflow)
        raise ValueError(f"unknown op {op!r}; one of {OPS}")

    async def with_retries(req: dict):
        timeout = float(req.get("timeout", 30.0))
        async with Client(req["target"], timeout_s=timeout) as client:
            op = req["op"]
            if op == "cluster_status":
                return await client.cluster_status()
            if op == "start":
                handle = await client.start_workflow(
                    req["workflow_type"], req.get("args") or {}, workflow_id=req["workflow_id"],
                    reuse_policy=req.get("reuse_policy", "ALLOW_DUPLICATE"),
                    request_id=req.get("request_id"))
                return {"run_id": handle.run_id, "started": handle.started}
            if op == "describe":
                return await client.describe_workflow(req["workflow_id"], req.get("run_id"))
            raise ValueError(f"op {op!r} has no retrying form")

    def emit(result: dict) -> None:
        line = json.dumps(result, default=repr)
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def handle(req: dict) -> None:
        result = {"id": req.get("id"), "op": req.get("op"), "target": req.get("target"),
                  "t0": time.monotonic()}
        try:
            value = await (with_retries(req) if req.get("retry") else once(req))
            result.update(ok=True, value=value)
        except grpc.aio.AioRpcError as exc:
            err = error_from_rpc(exc, target=req.get("target", ""))
            result.update(ok=False, error={
                "code": err.code, "type": type(err).__name__, "grpc": exc.code().name,
                "message": err.message, "definite": err.definite,
                "details": {k: v for k, v in err.details.items()}})
        except CodaError as err:
            result.update(ok=False, error={
                "code": err.code, "type": type(err).__name__, "grpc": None,
                "message": err.message, "definite": err.definite,
                "details": {k: v for k, v in err.details.items()}})
        except Exception as exc:  # a bug in the probe or a bad request: report, keep serving
            result.update(ok=False, error={"code": "PROBE_ERROR", "type": type(exc).__name__,
                                           "grpc": None, "message": repr(exc),
                                           "definite": False, "details": {}})
        result["t1"] = time.monotonic()
        emit(result)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            task = loop.create_task(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        for ch in channels.values():
            await ch.close()

    asyncio.run(main())


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
