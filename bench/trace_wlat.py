"""Where one W-lat workflow's time goes, leg by leg, from wall-clock stamps.

    python bench/trace_wlat.py [--count 200] [--shards 2]

A 3-node cluster (nodes started with CODA_TRACE_DIR: flow.latency_trace) and one
supervisor with 2 workers; the bench client stamps the call it makes. W-lat runs
`--count` single-task workflows one after another through execute_workflow; for each,
the legs between consecutive stamps, and the table gives their medians:

  client before its gRPC call -> the request reaching StartWorkflow's handler -> the
  start proposed -> its answer -> the closing entry's batch handed to the event loop ->
  settled there -> the closed run read -> the handler left -> the client holding the
  answer -> the client's call returning.

Every stamp is time.time() on this one machine, so legs across processes are
comparable. Saves bench/results/trace-wlat-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_execution as bx  # noqa: E402
import coda  # noqa: E402
import workloads  # noqa: E402
from coda.client import client as client_module  # noqa: E402

LEGS = ("client before its call", "request to the handler", "handler to the start proposed",
        "the start's commit", "start answered to close handed over",
        "close handed over to settled", "settled to the closed run read",
        "to the handler's exit", "answer to the client's call", "client after its call",
        "total")


class CallStamps:
    """The bench client's StartWorkflow calls, stamped (Client._call wrapped)."""

    def __init__(self):
        self.by_workflow: dict[str, tuple[float, float]] = {}
        self._call = client_module.Client._call

    def install(self) -> None:
        stamps, call = self, self._call

        async def stamped(client, method, request, **kwargs):
            if method != "StartWorkflow":
                return await call(client, method, request, **kwargs)
            sent_s = time.time()
            answer = await call(client, method, request, **kwargs)
            stamps.by_workflow[request.workflow_id] = (sent_s, time.time())
            return answer
        client_module.Client._call = stamped

    def remove(self) -> None:
        client_module.Client._call = self._call


def read_traces(trace_dir: str) -> dict[str, dict[str, list[float]]]:
    """workflow id -> kind -> its times (the last line of a kind wins)."""
    out: dict[str, dict[str, list[float]]] = {}
    for path in glob.glob(os.path.join(trace_dir, "*.trace")):
        with open(path) as f:
            for line in f:
                kind, workflow_id, *times = line.split()
                out.setdefault(workflow_id, {})[kind] = [float(t) for t in times]
    return out


def legs_of(began_s: float, ended_s: float, call: tuple, node: dict) -> list[float] | None:
    if not {"rpc", "start", "close"} <= node.keys():
        return None
    rpc_in, rpc_out = node["rpc"]
    proposed, answered, read = node["start"]
    posted, settled = node["close"]
    points = [began_s, call[0], rpc_in, proposed, answered, posted, settled, read, rpc_out,
              call[1], ended_s]
    return [b - a for a, b in zip(points, points[1:])] + [ended_s - began_s]


async def run(cluster_address: str, count: int, stamps: CallStamps) -> dict[str, tuple]:
    client = coda.Client(cluster_address)
    try:
        await bx.warm_up(client, 60.0)
        stamps.by_workflow.clear()
        walls = {}
        for i in range(count):
            workflow_id = f"trace-{i}"
            began_s = time.time()
            await client.execute_workflow(workloads.one, {}, workflow_id=workflow_id,
                                          timeout=60.0)
            walls[workflow_id] = (began_s, time.time())
        return walls
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--raft", metavar="NAME=VALUE", action="append", default=[],
                        type=bx.raft_setting, help="A [raft] setting of the nodes; repeatable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="coda-bench-trace-") as root:
        trace_dir = os.path.join(root, "traces")
        os.makedirs(trace_dir)
        side = bx.WorkloadCluster(root, args.shards, env={"CODA_TRACE_DIR": trace_dir},
                                  raft=dict(args.raft) or None)
        stamps = CallStamps()
        stamps.install()
        try:
            print(f"{args.shards} shards, {args.count} workflows in a row ...", flush=True)
            side.start()
            walls = asyncio.run(run(side.cluster.address, args.count, stamps))
        finally:
            stamps.remove()
            side.close()
        traces = read_traces(trace_dir)
    rows = [legs for wid, (began, ended) in walls.items()
            if wid in stamps.by_workflow and wid in traces
            and (legs := legs_of(began, ended, stamps.by_workflow[wid], traces[wid]))]
    if not rows:
        raise SystemExit("no workflow has every stamp: is flow.latency_trace wired?")
    medians = {leg: round(1000 * statistics.median(r[i] for r in rows), 3)
               for i, leg in enumerate(LEGS)}
    for leg, ms in medians.items():
        print(f"  {leg:38s} {ms:8.3f} ms")
    print(f"  ({len(rows)} of {len(walls)} workflows had every stamp; medians per leg do not "
          "add up to the total's median)")
    report = {"benchmark": "W-lat legs", "settings": vars(args), "git": bx.git_facts(),
              "workflows": len(walls), "traced": len(rows), "median_ms": medians}
    print(f"saved {bx.save_report(args.out, 'trace-wlat', report)}")


if __name__ == "__main__":
    main()
