"""The README's main job: a local three-node Flow cluster running example workflows.

Starts `coda-flow dev` and a supervisor with two worker processes (`coda supervisor run
examples.weekly_email`), runs the weekly-email workflow (it fails now and then with a
random 1/0 and is retried by replay: emails already sent are not sent again) and
`process_event`, prints their results and how many attempts they took, restarts the
whole cluster on the same data directory, shows the results are still there, and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import coda

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def start_cluster(data_dir: str, base_port: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "coda.flow.cli", "dev", "--data-dir", data_dir,
         "--base-port", str(base_port)], stdout=subprocess.PIPE, text=True)
    address = None
    for line in proc.stdout:
        print("  coda-flow dev:", line.rstrip())
        if line.startswith("CODA_ADDRESS="):
            address = line.strip().split("=", 1)[1]
        if line.startswith("CODA_METRICS="):
            break
    if address is None:
        proc.wait()
        sys.exit(f"coda-flow dev exited ({proc.returncode}) before it was ready")
    return proc, address


def start_supervisor(address: str, log_path: str) -> subprocess.Popen:
    env = dict(os.environ, CODA_ADDRESS=address,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "coda.client.cli", "supervisor", "run",
             "examples.demo_workflows", "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def start_when_declared(client, workflow_type: str, **kwargs):
    """The supervisor declares its types when it connects; until then a start is refused."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await client.start_workflow(workflow_type, **kwargs)
        except coda.errors.NotFound:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run_examples(address: str) -> dict:
    async with coda.Client(address) as client:
        handles = [await start_when_declared(
            client, "weekly_email", args={"failure_rate": 0.5}, workflow_id=f"weekly-demo-{n}",
            request_id=f"demo-weekly-{n}") for n in range(3)]
        handles.append(await start_when_declared(
            client, "process_event", workflow_id="ev-demo", request_id="demo-ev",
            args={"project_id": "p1", "event_data": {"event_id": "e-1", "Kind": "signup"}}))
        results = {}
        for handle in handles:
            result = await handle.result(timeout=120)
            info = await handle.describe()
            history = await handle.history()
            print(f"{handle.workflow_id}: {info['status']} after {info['attempt']} "
                  f"attempt(s): {result}")
            report_replays(handle.workflow_id, history)
            results[handle.workflow_id] = result
        return results


def report_replays(workflow_id: str, history: list[dict]) -> None:
    """Retried attempts replay history: every task completes once, whatever failed."""
    failed = sum(1 for e in history if e["type"] == "WorkflowAttemptFailed")
    scheduled = [e["key"] for e in history if e["type"] == "TaskScheduled"]
    completed = [e["key"] for e in history if e["type"] == "TaskCompleted"]
    if sorted(completed) != sorted(set(scheduled)):
        sys.exit(f"{workflow_id}: a task completed twice or never: {completed}")
    if failed:
        print(f"  {failed} attempt(s) failed with 1/0 and were replayed; each of the "
              f"{len(completed)} tasks ran to completion once")


async def check_after_restart(address: str, expected: dict) -> None:
    async with coda.Client(address) as client:
        for workflow_id, result in expected.items():
            info = await client.describe_workflow(workflow_id)
            if info["status"] != "COMPLETED" or info["result"] != result:
                sys.exit(f"durability check failed for {workflow_id}: {info}")
            print(f"after a full restart: {workflow_id} is still {info['status']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--base-port", type=int, default=7100)
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="coda-demo-")
    os.makedirs(data_dir, exist_ok=True)
    print(f"cluster data in {data_dir}")
    cluster, address = start_cluster(data_dir, args.base_port)
    supervisor_log = os.path.join(data_dir, "supervisor.log")
    supervisor = start_supervisor(address, supervisor_log)
    print(f"supervisor pid {supervisor.pid} (log {supervisor_log})")
    try:
        results = asyncio.run(run_examples(address))
    finally:
        stop(supervisor)
        stop(cluster)
    print("cluster stopped; starting it again on the same data")
    cluster, address = start_cluster(data_dir, args.base_port)
    try:
        asyncio.run(check_after_restart(address, results))
    finally:
        stop(cluster)
    print("done")


if __name__ == "__main__":
    main()
