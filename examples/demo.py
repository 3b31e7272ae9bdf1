"""The README's main job: a local three-node Flow cluster and a workflow started on it.

Starts `coda-flow dev`, waits for its CODA_ADDRESS line, starts a `process_event`
workflow through `coda.Client`, shows where it lives, restarts the whole cluster on the
same data directory and shows the workflow is still there, then stops.

Workers that run workflow code arrive with the durable-execution issue; until then a
started workflow waits, queued, on its type's durable queue (`queued_on` below).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile

import coda


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


def stop_cluster(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


async def first_run(address: str) -> str:
    async with coda.Client(address) as client:
        handle = await client.start_workflow(
            "process_event", args={"project_id": "p1", "event_data": {"event_id": "e-1"}},
            workflow_id="ev-1", request_id="demo-start-ev-1")
        print(f"started workflow {handle.workflow_id}, run {handle.run_id} "
              f"(new run: {handle.started})")
        info = await handle.describe()
        print(f"  status {info['status']} on shard {info['shard']}, queued on {info['queued_on']}")
        status = await client.cluster_status()
        for shard in status["shards"]:
            print(f"  shard {shard['shard']}: leader {shard['leader']}, "
                  f"queues {shard['queue_depths']}")
        return handle.run_id


async def after_restart(address: str, run_id: str) -> None:
    async with coda.Client(address) as client:
        info = await client.describe_workflow("ev-1")
        same = "the same run" if info["run_id"] == run_id else "A DIFFERENT RUN"
        print(f"after a full restart: ev-1 is {info['status']}, {same} ({info['run_id']})")
        if info["run_id"] != run_id:
            sys.exit("durability check failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="default: a fresh temporary directory")
    parser.add_argument("--base-port", type=int, default=7100)
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="coda-demo-")
    os.makedirs(data_dir, exist_ok=True)
    print(f"cluster data in {data_dir}")
    proc, address = start_cluster(data_dir, args.base_port)
    try:
        run_id = asyncio.run(first_run(address))
    finally:
        stop_cluster(proc)
    print("cluster stopped; starting it again on the same data")
    proc, address = start_cluster(data_dir, args.base_port)
    try:
        asyncio.run(after_restart(address, run_id))
    finally:
        stop_cluster(proc)
    print("done")


if __name__ == "__main__":
    main()
