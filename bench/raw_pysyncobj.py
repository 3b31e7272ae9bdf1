"""Raw pysyncobj commit rate on this machine: the baseline the Flow numbers are read against.

Three processes on loopback, each one SyncObj with a journal file and the same timing as
Flow's default RaftTiming, applying a no-op counter. The leader keeps `--in-flight`
commands outstanding for `--seconds` and reports commits/s and commit latency.

--mode stock:   pysyncobj as shipped (journal never flushed).
--mode durable: Flow's DurableSyncObj (journal fdatasync'd before acks, the tick thread
               woken by each proposal; see flow/raft_base.py).

Run standalone:  python bench/raw_pysyncobj.py --mode stock --seconds 5
(bench/bench_starts.py runs it beside the Flow measurement.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PAYLOAD = b"x" * 100


def node_main(args) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    from coda.flow.config import RaftTiming
    from coda.flow.raft_base import DurableSyncObj, register_journal

    base = DurableSyncObj if args.mode == "durable" else SyncObj
    t = RaftTiming()
    journal = os.path.join(args.dir, f"node{args.index}.journal")
    dump = os.path.join(args.dir, f"node{args.index}.dump")
    if args.mode == "durable":
        register_journal(journal, dump)

    class Counter(base):
        def __init__(self, me, others):
            conf = SyncObjConf(autoTick=True, autoTickPeriod=t.auto_tick_period_s,
                               appendEntriesPeriod=t.append_entries_period_s,
                               raftMinTimeout=t.election_timeout_min_s,
                               raftMaxTimeout=t.election_timeout_max_s,
                               leaderFallbackTimeout=t.leader_fallback_timeout_s,
                               connectionRetryTime=t.connection_retry_s,
                               appendEntriesBatchSizeBytes=256 * 1024,
                               journalFile=journal, fullDumpFile=dump,
                               logCompactionMinEntries=10**9, logCompactionMinTime=10**9,
                               commandsQueueSize=100000, commandsWaitLeader=False)
            super().__init__(me, others, conf)
            self.count = 0

        @replicated
        def apply_entry(self, data):
            self.count += 1
            return self.count

    ports = [args.port + i for i in range(3)]
    me = f"127.0.0.1:{ports[args.index]}"
    obj = Counter(me, [f"127.0.0.1:{p}" for i, p in enumerate(ports) if i != args.index])
    if args.mode == "durable":
        obj.install_waker()  # as flow.replica does: a proposal wakes the tick thread
    done_path = os.path.join(args.dir, "done")
    deadline = time.monotonic() + args.seconds + 60
    while not obj._isLeader():
        if os.path.exists(done_path) or time.monotonic() > deadline:
            obj.destroy()  # a follower: the leader has finished (or never appeared)
            return
        time.sleep(0.05)
    result = drive(obj, args.seconds, args.in_flight)
    with open(os.path.join(args.dir, "result.json.tmp"), "w") as f:
        json.dump(result, f)
    os.replace(os.path.join(args.dir, "result.json.tmp"), os.path.join(args.dir, "result.json"))
    with open(done_path, "w"):
        pass
    obj.destroy()


def drive(obj, seconds: float, in_flight: int) -> dict:
    slots = threading.Semaphore(in_flight)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def submit():
        started = time.perf_counter()

        def done(result, error):
            with lock:
                if error == 0:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1
            slots.release()

        obj.apply_entry(PAYLOAD, callback=done)
        if hasattr(obj, "wake"):
            obj.wake()

    warmup_end = time.monotonic() + 1.0
    while time.monotonic() < warmup_end:
        slots.acquire()
        submit()
    with lock:
        latencies.clear()
    began = time.monotonic()
    end = began + seconds
    while time.monotonic() < end:
        slots.acquire()
        submit()
    for _ in range(in_flight):
        slots.acquire(timeout=10)
    elapsed = time.monotonic() - began
    lat = sorted(latencies)
    return {"commits": len(lat), "errors": errors[0], "seconds": elapsed,
            "commits_per_s": len(lat) / elapsed,
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
            "mean_ms": 1000 * statistics.fmean(lat) if lat else None}


def run(mode: str, seconds: float, in_flight: int, port: int) -> dict:
    """Start three node processes, wait for the leader's result, return it."""
    with tempfile.TemporaryDirectory(prefix="coda-raw-raft-") as d:
        procs = [subprocess.Popen([sys.executable, __file__, "--node", str(i), "--dir", d,
                                   "--mode", mode, "--seconds", str(seconds),
                                   "--in-flight", str(in_flight), "--port", str(port)])
                 for i in range(3)]
        try:
            deadline = time.monotonic() + seconds + 60
            result_path = os.path.join(d, "result.json")
            while not os.path.exists(result_path):
                if time.monotonic() > deadline:
                    raise RuntimeError("raw pysyncobj run produced no result")
                time.sleep(0.1)
            with open(result_path) as f:
                result = json.load(f)
        finally:
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    result.update(mode=mode, in_flight=in_flight, payload_bytes=len(PAYLOAD))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("stock", "durable"), default="stock")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--port", type=int, default=7900)
    parser.add_argument("--node", type=int, default=None, dest="index")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    if args.index is not None:
        node_main(args)
    else:
        print(json.dumps(run(args.mode, args.seconds, args.in_flight, args.port), indent=2))


if __name__ == "__main__":
    main()
