"""A real Flow cluster for tests: separate `coda-flow serve` processes on loopback ports.

Each node is its own OS process with its own data directory (real LMDB, real Raft journal,
real gRPC sockets). Tests kill them with SIGKILL, pause them with SIGSTOP, restart them,
and, once the cluster is stopped, open every replica's LMDB to compare contents.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from coda.client.client import Client, SyncClient
from coda.errors import CodaError, Indeterminate
from coda.flow import config as config_mod
from coda.flow.replica import _HEADER as SNAPSHOT_HEADER, SNAPSHOT_MAGIC
from coda.flow.sharding import shard_for
from coda.storage import codec, keys
from coda.storage.env import ShardStore

HOST = "127.0.0.1"
ROOT = str(Path(__file__).resolve().parents[2])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, rng: random.Random) -> int:
    """A base port with `count` consecutive free ports."""
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port block")


class Cluster:
    def __init__(self, root: str, *, nodes: int = 3, shards: int = 4, raft: dict | None = None,
                 seed: int | None = None, hosts: list[str] | None = None, wrap=None,
                 payload_bytes_max: int | None = None, supervisor_lease_ms: int | None = None,
                 settings: dict | None = None, env: dict | None = None):
        """hosts: one address per node (default loopback); wrap(i, argv) -> argv lets a
        test launch node i differently (e.g. `ip netns exec NS` + argv);
        payload_bytes_max: the cluster's payload limit (default: the server's);
        env: variables the node processes get on top of this one's (bench_ab.py runs
        another checkout's code that way)."""
        self.root = root
        self.env = dict(os.environ, **env) if env else None
        self.wrap = wrap or (lambda i, argv: argv)
        hosts = hosts or [HOST] * nodes
        self.shards = shards
        self.secret = secrets.token_hex(16)
        rng = random.Random(seed)
        per_node = 2 + shards
        base = free_port_block(per_node * nodes, rng)
        self.nodes = []
        for i in range(nodes):
            b = base + i * per_node
            h = hosts[i]
            self.nodes.append({"id": f"n{i + 1}", "client": f"{h}:{b}",
                               "metrics": f"{h}:{b + 1}", "raft": f"{h}:{b + 2}"})
        self.raft = dict(raft or {})
        self.payload_bytes_max = payload_bytes_max
        self.supervisor_lease_ms = supervisor_lease_ms
        self.settings = dict(settings or {})  # more config settings, e.g. history limits
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.config_paths = [self._write_config(i) for i in range(nodes)]

    # --- configuration -------------------------------------------------------------------
    def config_mapping(self, i: int) -> dict:
        mapping = {"node_id": self.nodes[i]["id"], "data_dir": os.path.join(self.root, "data"),
                   "shards": self.shards, "secret": self.secret, "nodes": self.nodes,
                   "raft": self.raft}
        if self.payload_bytes_max is not None:
            mapping["payload_bytes_max"] = self.payload_bytes_max
        if self.supervisor_lease_ms is not None:
            mapping["supervisor_lease_ms"] = self.supervisor_lease_ms
        mapping.update(self.settings)
        return mapping

    def _write_config(self, i: int) -> str:
        wanted = self.config_mapping(i)
        full = config_mod.to_mapping(config_mod.from_mapping(wanted))  # validated here
        # Only what was set: the node's own defaults fill the rest, so a node of another
        # build (bench_ab.py --b-tree) is not handed settings it does not know.
        written = {key: full[key] for key in wanted}
        written["raft"] = {key: full["raft"][key] for key in self.raft}
        from coda.flow.cli import _to_toml
        path = os.path.join(self.root, f"{self.nodes[i]['id']}.toml")
        os.makedirs(self.root, exist_ok=True)
        with open(path, "w") as f:
            f.write(_to_toml(written))
        return path

    @property
    def address(self) -> str:
        return ",".join(n["client"] for n in self.nodes)

    def address_of(self, nodes) -> str:
        """The client addresses of some nodes (e.g. all but a victim), comma-separated."""
        return ",".join(self.nodes[i]["client"] for i in nodes)

    def node_index(self, client_address: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n["client"] == client_address)

    def raft_address(self, i: int, shard: int) -> str:
        host, port = self.nodes[i]["raft"].rsplit(":", 1)
        return f"{host}:{int(port) + shard}"

    def shard_of(self, workflow_id: str) -> int:
        return shard_for(workflow_id, self.shards)

    def ids_by_shard(self, prefix: str, per_shard: int) -> dict[int, list[str]]:
        """shard -> `per_shard` fresh workflow ids (prefix-N) that hash to it."""
        out: dict[int, list[str]] = {s: [] for s in range(self.shards)}
        n = 0
        while any(len(v) < per_shard for v in out.values()):
            wid = f"{prefix}-{n}"
            n += 1
            bucket = out[self.shard_of(wid)]
            if len(bucket) < per_shard:
                bucket.append(wid)
        return out

    def log_path(self, i: int) -> str:
        return os.path.join(self.root, f"{self.nodes[i]['id']}.log")

    def shard_dir(self, i: int, shard: int) -> str:
        return os.path.join(self.root, "data", self.nodes[i]["id"], f"shard-{shard:03d}")

    # --- processes -----------------------------------------------------------------------
    def start(self, i: int | None = None) -> None:
        for j in ([i] if i is not None else range(len(self.nodes))):
            assert self.procs[j] is None or self.procs[j].poll() is not None
            log = open(self.log_path(j), "ab")
            argv = [sys.executable, "-m", "coda.flow.cli", "serve", "--config",
                    self.config_paths[j]]
            self.procs[j] = subprocess.Popen(self.wrap(j, argv), stdout=log,
                                             stderr=subprocess.STDOUT, env=self.env)
            log.close()

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def stop(self, i: int | None = None, timeout_s: float = 20.0) -> None:
        for j in ([i] if i is not None else range(len(self.nodes))):
            proc = self.procs[j]
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for j in ([i] if i is not None else range(len(self.nodes))):
            proc = self.procs[j]
            if proc is None:
                continue
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"node {self.nodes[j]['id']} ignored SIGTERM for {timeout_s} s")

    def kill_all(self) -> None:
        """SIGKILL every node at once (no node outlives another by more than a syscall)."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGKILL)
        for proc in live:
            proc.wait(timeout=10)

    def alive(self, i: int) -> bool:
        return self.procs[i] is not None and self.procs[i].poll() is None

    def assert_alive(self, nodes=None) -> None:
        """Every given node (default: all) still runs; a dead one fails with its log tail."""
        for i in (range(len(self.nodes)) if nodes is None else nodes):
            if not self.alive(i):
                code = self.procs[i].returncode if self.procs[i] is not None else None
                raise AssertionError(f"node {self.nodes[i]['id']} is not running (exit code "
                                     f"{code}); log tail:\n{self.read_log(i)[-3000:]}")

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    # --- observation ---------------------------------------------------------------------
    def client(self, node=None, timeout_s: float = 30.0) -> SyncClient:
        """A client of one node (an index), of some nodes (a list), or of all (None)."""
        if node is None:
            address = self.address
        elif isinstance(node, int):
            address = self.nodes[node]["client"]
        else:
            address = self.address_of(node)
        return SyncClient(address, timeout_s=timeout_s, allow_undeclared_types=True)

    def status(self, via=None) -> dict:
        with self.client(via, timeout_s=5.0) as c:
            return c.cluster_status()

    def wait_leaders(self, timeout_s: float = 30.0, via=None) -> dict:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status(via)
                if all(s["leader"] for s in last["shards"]):
                    return last
            except CodaError as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"not every shard has a leader after {timeout_s} s: {last}")

    def leader_node(self, shard: int) -> int:
        leader = self.wait_leaders()["shards"][shard]["leader"]
        return self.node_index(leader)

    def leaders(self) -> dict[int, int]:
        """shard -> index of the node leading it (waits until every shard has a leader)."""
        return {s["shard"]: self.node_index(s["leader"]) for s in self.wait_leaders()["shards"]}

    def wait_converged(self, timeout_s: float = 60.0) -> dict:
        """Every replica of every shard reachable and at the same applied index."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                ok = all(s["leader"] and all(r["reachable"] for r in s["replicas"])
                         and len({r["applied_index"] for r in s["replicas"]}) == 1
                         and len({r["commit_index"] for r in s["replicas"]}) == 1
                         for s in last["shards"])
                if ok:
                    return last
            except CodaError as exc:
                last = exc
            time.sleep(0.3)
        raise AssertionError(f"replicas did not converge in {timeout_s} s: {last}")

    def digests(self) -> dict[int, list[str]]:
        """shard -> [digest of node 0's LMDB, node 1's, ...]; the cluster must be stopped.

        The applied index is left out: stopping every node at once makes each leader hand
        its shard to a peer (flow.handoff), and the new leader's first entry of its term,
        a no-op, may reach one replica's LMDB and not another's before they exit (seen as
        applied index 28 against 27 with every record equal). A replica that missed an
        entry that changed state still differs here."""
        assert not any(self.alive(i) for i in range(len(self.nodes)))
        out = {}
        for shard in range(self.shards):
            out[shard] = []
            for i in range(len(self.nodes)):
                store = ShardStore(os.path.join(self.shard_dir(i, shard), "lmdb"))
                try:
                    out[shard].append(store.digest(with_applied_index=False))
                finally:
                    store.close()
        return out

    def metrics_text(self, i: int, timeout_s: float = 5.0) -> str:
        with urllib.request.urlopen(f"http://{self.nodes[i]['metrics']}/metrics",
                                    timeout=timeout_s) as answer:
            return answer.read().decode()

    def metric(self, i: int, name: str, **labels) -> float:
        """The value of one sample on node i's metrics endpoint (0.0 if absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics_text(i).splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, value = line.rsplit(" ", 1)
            sample, _, label_text = key.partition("{")
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if sample == name and got == want:
                return float(value)
        return 0.0

    def read_log(self, i: int) -> str:
        with open(self.log_path(i), errors="replace") as f:
            return f.read()

    def stored_runs(self, i: int = 0) -> dict[str, dict]:
        """workflow id -> {"current": run id, "history_runs": {run ids with history},
        "closed_runs": {run ids in the runs db}}, read from node i's LMDB (stopped cluster)."""
        assert not self.alive(i)
        out: dict[str, dict] = {}

        def entry(wid: str) -> dict:
            return out.setdefault(wid, {"current": None, "history_runs": set(),
                                        "closed_runs": set()})

        for shard in range(self.shards):
            store = ShardStore(os.path.join(self.shard_dir(i, shard), "lmdb"))
            try:
                with store.read() as txn:
                    for key, raw in txn.scan(keys.WORKFLOWS):
                        entry(key.decode())["current"] = codec.unpack(raw)["run_id"]
                    for key, _ in txn.scan(keys.RUNS):
                        wid, run_id = key.split(keys.SEP)[:2]
                        entry(wid.decode())["closed_runs"].add(run_id.decode())
                    for key, _ in txn.scan(keys.HISTORY):
                        wid, run_id = key.split(keys.SEP)[:2]
                        entry(wid.decode())["history_runs"].add(run_id.decode())
            finally:
                store.close()
        return out


def describe_many(address: str, workflow_ids, concurrency: int = 64) -> dict[str, dict | Exception]:
    """workflow id -> describe answer (or the CodaError raised), many calls in flight."""
    async def run() -> dict:
        gate = asyncio.Semaphore(concurrency)
        async with Client(address, timeout_s=60.0, allow_undeclared_types=True) as client:
            async def one(wid):
                async with gate:
                    try:
                        return wid, await client.describe_workflow(wid)
                    except CodaError as exc:
                        return wid, exc
            return dict(await asyncio.gather(*(one(w) for w in workflow_ids)))

    return asyncio.run(run())


class StartStream:
    """Background writers: one thread per shard, each starting workflows on its shard in a
    loop through its own SyncClient (with the client's retries), recording every outcome.

    acked:   workflow id -> (run id, shard, monotonic time sent, monotonic time acked)
    unknown: workflow ids whose start raised Indeterminate (may or may not exist)
    errors:  (workflow id, error) for any other failure (a test normally asserts none)
    """

    def __init__(self, cluster: Cluster, address: str, prefix: str, *, shards=None,
                 pause_s: float = 0.0, timeout_s: float = 60.0):
        self.cluster = cluster
        self.address = address
        self.prefix = prefix
        self.shards = list(range(cluster.shards)) if shards is None else list(shards)
        self.pause_s = pause_s
        self.timeout_s = timeout_s
        self.acked: dict[str, tuple] = {}
        self.unknown: set[str] = set()
        self.errors: list[tuple[str, Exception]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(s,), daemon=True,
                                          name=f"writer-shard-{s}") for s in self.shards]

    def start(self) -> "StartStream":
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout_s: float = 90.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout_s)
            assert not t.is_alive(), f"{t.name} did not stop within {timeout_s} s"

    def _ids(self, shard: int):
        n = 0
        while True:
            wid = f"{self.prefix}-{shard}-{n}"
            n += 1
            if self.cluster.shard_of(wid) == shard:
                yield wid

    def _run(self, shard: int) -> None:
        with SyncClient(self.address, timeout_s=self.timeout_s, allow_undeclared_types=True) as client:
            for wid in self._ids(shard):
                if self._stop.is_set():
                    return
                sent = time.monotonic()
                try:
                    handle = client.start_workflow("stream", {"shard": shard}, workflow_id=wid)
                except Indeterminate:
                    with self._lock:
                        self.unknown.add(wid)
                except CodaError as exc:
                    with self._lock:
                        self.errors.append((wid, exc))
                else:
                    with self._lock:
                        self.acked[wid] = (handle.run_id, shard, sent, time.monotonic())
                if self.pause_s:
                    time.sleep(self.pause_s)

    # --- queries (thread-safe snapshots) --------------------------------------------------
    def acks(self, shard: int | None = None, after: float | None = None) -> list[tuple]:
        """[(ack time, workflow id)] in ack order, optionally of one shard / after a time."""
        with self._lock:
            items = list(self.acked.items())
        return sorted((t_ack, wid) for wid, (_, s, _, t_ack) in items
                      if (shard is None or s == shard) and (after is None or t_ack > after))

    def wait_acks(self, count: int, *, shard: int | None = None, after: float | None = None,
                  timeout_s: float = 60.0) -> list[tuple]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.acks(shard, after)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {count} acknowledged starts (shard {shard}) "
                                     f"within {timeout_s} s; errors: {self.errors[:5]}")
            time.sleep(0.05)


def start_many(address: str, workflow_ids, *, workflow_type: str = "bulk",
               concurrency: int = 32) -> dict[str, str]:
    """Start every workflow id (concurrently, with the client's retries); returns
    workflow id -> run id. Any failure, an unknown outcome included, is raised."""
    async def run() -> dict:
        gate = asyncio.Semaphore(concurrency)
        async with Client(address, timeout_s=60.0, allow_undeclared_types=True) as client:
            async def one(wid):
                async with gate:
                    handle = await client.start_workflow(workflow_type, {"id": wid},
                                                         workflow_id=wid)
                    return wid, handle.run_id
            return dict(await asyncio.gather(*(one(w) for w in workflow_ids)))

    return asyncio.run(run())


# --- on-disk Raft state (read while the node is stopped, SIGSTOPped or dead) ----------------

def journal_indexes(path: str) -> list[tuple[int, int]]:
    """[(index, term)] of the entries in a pysyncobj 0.3.17 journal file, parsed read-only.

    Layout: name (24 bytes), version (8), format (u32), offset past the last record (u32),
    then records: u32 size, u64 index, u64 term, command, u32 size (little-endian).
    """
    with open(path, "rb") as f:
        data = f.read()
    end = struct.unpack_from("<I", data, 36)[0]
    offset, out = 40, []
    while offset < end:
        size = struct.unpack_from("<I", data, offset)[0]
        out.append(struct.unpack_from("<QQ", data, offset + 4))
        offset += size + 8
    return out


def snapshot_point(path: str) -> tuple[int, int]:
    """(LMDB applied index, Raft index of the last entry) recorded in a Coda snapshot file."""
    with open(path, "rb") as f:
        magic, applied, raft_len = SNAPSHOT_HEADER.unpack(f.read(SNAPSHOT_HEADER.size))
        assert magic == SNAPSHOT_MAGIC, path
        last_entry = pickle.loads(f.read(raft_len))[0]
    return applied, last_entry[1]


class SupervisorProcess:
    """`coda supervisor run MODULE --workers N` as a real process, with a health port.

    module_dir goes first on PYTHONPATH (test modules written to tmp dirs); env adds
    variables (e.g. where a test module counts task executions)."""

    def __init__(self, cluster: Cluster, module: str, *, root: str, workers: int = 2,
                 module_dir: str | None = None, env: dict | None = None,
                 supervisor_id: str | None = None, slots: int | None = None,
                 drain_s: float | None = None, build_id: str | None = None):
        self.cluster = cluster
        self.module = module
        self.root = root
        self.workers = workers
        self.health_port = free_port_block(1, random.Random())
        self.supervisor_id = supervisor_id or f"sup-{secrets.token_hex(4)}"
        self.env = dict(os.environ, CODA_ADDRESS=cluster.address, **(env or {}))
        paths = [module_dir or ROOT, ROOT]
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [self.env.get("PYTHONPATH", "")])
        self.slots = slots
        self.drain_s = drain_s
        self.build_id = build_id
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(root, f"{self.supervisor_id}.log")

    def start(self) -> "SupervisorProcess":
        os.makedirs(self.root, exist_ok=True)
        argv = [sys.executable, "-m", "coda.client.cli", "supervisor", "run", self.module,
                "--workers", str(self.workers), "--health-port", str(self.health_port),
                "--supervisor-id", self.supervisor_id]
        if self.slots is not None:
            argv += ["--slots", str(self.slots)]
        if self.drain_s is not None:
            argv += ["--drain-s", str(self.drain_s)]
        if self.build_id is not None:
            argv += ["--build-id", self.build_id]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.root)
        return self

    def health(self, timeout_s: float = 2.0) -> dict:
        url = f"http://127.0.0.1:{self.health_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:  # 503 while not every shard is connected
            return json.loads(exc.read())

    def wait_connected(self, timeout_s: float = 60.0) -> dict:
        """Until every shard has a session (and the workers are up)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited ({self.proc.returncode}):\n"
                                     f"{self.read_log()[-3000:]}")
            try:
                last = self.health()
                if last.get("healthy"):
                    return last
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"supervisor not connected after {timeout_s} s: {last}\n"
                             f"{self.read_log()[-3000:]}")

    def worker_pids(self) -> list[int]:
        return list(self.health().get("workers") or [])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the supervisor and (for SIGKILL) its workers, like a machine dying."""
        pids = self.worker_pids() if sig == signal.SIGKILL else []
        self.proc.send_signal(sig)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 40.0) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"supervisor ignored SIGTERM for {timeout_s} s")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()
