"""Raw ceilings of the parts Flow is built from, measured on this machine in the same run.

- LMDB: write transactions per second with Flow's options (storage.env.LmdbOptions: an
  fdatasync per commit, no meta sync), one 100-byte put each, and reads per second.
- gRPC: unary round trips per second, grpc.aio client in this process, a grpc.aio server
  (uvloop) in another, `--concurrency` calls in flight, 100-byte messages: the floor of
  any Flow RPC.
- pysyncobj: bench/raw_pysyncobj.py (three processes, Flow's durable journal).

    python bench/raw_ceilings.py --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PAYLOAD = b"x" * 100


def lmdb_ceiling(seconds: float) -> dict:
    """Write transactions/s (one put, committed with Flow's sync options) and reads/s."""
    from coda.storage.env import ShardStore
    from coda.storage import keys
    with tempfile.TemporaryDirectory(prefix="coda-raw-lmdb-") as root:
        store = ShardStore(os.path.join(root, "lmdb"))
        env, db = store._env, store._dbs[keys.META]
        commits, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            with env.begin(write=True) as txn:
                txn.put(b"k%08d" % (commits % 10_000), PAYLOAD, db=db)
            commits += 1
        write_s = time.perf_counter() - began
        reads, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds / 2:
            with env.begin() as txn:
                txn.get(b"k%08d" % (reads % 10_000), db=db)
            reads += 1
        read_s = time.perf_counter() - began
        store.close()
    return {"write_txn_per_s": round(commits / write_s), "read_txn_per_s": round(reads / read_s),
            "options": "sync=True metasync=False (storage.env.LmdbOptions)"}


def grpc_server_main(port_file: str) -> None:
    import grpc
    import uvloop

    async def serve() -> None:
        server = grpc.aio.server()
        echo = grpc.unary_unary_rpc_method_handler(_echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Ping": echo}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(port_file + ".tmp", port_file)
        await server.wait_for_termination()

    uvloop.run(serve())


async def _echo(request: bytes, context) -> bytes:
    return request


def grpc_ceiling(seconds: float, concurrency: int) -> dict:
    """Unary round trips/s against an echo server in another process."""
    import grpc
    with tempfile.TemporaryDirectory(prefix="coda-raw-grpc-") as root:
        port_file = os.path.join(root, "port")
        server = subprocess.Popen([sys.executable, __file__, "--grpc-server", port_file])
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(port_file):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the gRPC echo server did not start")
                time.sleep(0.02)
            with open(port_file) as f:
                address = f"127.0.0.1:{f.read().strip()}"

            async def drive() -> dict:
                latencies: list[float] = []
                async with grpc.aio.insecure_channel(address) as channel:
                    ping = channel.unary_unary("/bench.Echo/Ping")
                    await ping(PAYLOAD)
                    stop_at = time.perf_counter() + seconds

                    async def worker() -> None:
                        while time.perf_counter() < stop_at:
                            t = time.perf_counter()
                            await ping(PAYLOAD)
                            latencies.append(time.perf_counter() - t)
                    began = time.perf_counter()
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                    elapsed = time.perf_counter() - began
                latencies.sort()
                return {"round_trips_per_s": round(len(latencies) / elapsed),
                        "p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
                        "concurrency": concurrency}

            one = asyncio.run(drive_one(address, seconds / 2))
            many = asyncio.run(drive())
            return {**many, "sequential_p50_ms": one}
        finally:
            server.kill()
            server.wait()


async def drive_one(address: str, seconds: float) -> float:
    """p50 of one call at a time (latency floor)."""
    import grpc
    latencies = []
    async with grpc.aio.insecure_channel(address) as channel:
        ping = channel.unary_unary("/bench.Echo/Ping")
        await ping(PAYLOAD)
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await ping(PAYLOAD)
            latencies.append(time.perf_counter() - t)
    latencies.sort()
    return round(1000 * latencies[len(latencies) // 2], 3)


def pysyncobj_ceiling(seconds: float, in_flight: int) -> dict:
    import random
    import raw_pysyncobj
    port = random.Random().randrange(30000, 50000)
    return raw_pysyncobj.run("durable", seconds, in_flight, port)


def reference_loop_ms(runs: int = 5) -> dict:
    """How fast this machine runs Python right now: a fixed single-threaded loop (msgpack
    records packed and unpacked, dicts and strings built), best and median of `runs`.
    The same code and data every time, so it moves only with the machine: on this shared
    2-core host it moved by a third within an hour, and every figure of a run with it."""
    import msgpack
    record = {"workflow_id": "wf-000123", "status": "RUNNING", "attempt": 1,
              "history": list(range(20)), "input": b"x" * 64}
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        for i in range(20_000):
            decoded = msgpack.unpackb(msgpack.packb(dict(record, seq=i)))
            decoded["key"] = f"{decoded['workflow_id']}/{i}"
        times.append(1000 * (time.perf_counter() - began))
    times.sort()
    return {"best_ms": round(times[0], 1), "median_ms": round(times[len(times) // 2], 1)}


def measure_all(seconds: float, grpc_concurrency: int = 64, raft_in_flight: int = 2000) -> dict:
    return {"reference_loop": reference_loop_ms(),
            "pysyncobj_durable": pysyncobj_ceiling(seconds, raft_in_flight),
            "lmdb": lmdb_ceiling(seconds),
            "grpc": grpc_ceiling(seconds, grpc_concurrency)}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--grpc-server":
        grpc_server_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--grpc-concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(measure_all(args.seconds, args.grpc_concurrency), indent=2))


if __name__ == "__main__":
    main()
