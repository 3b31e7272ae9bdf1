"""A real Flow cluster for tests: separate `coda-flow serve` processes on loopback ports.

Each node is its own OS process with its own data directory (real LMDB, real Raft journal,
real gRPC sockets). Tests kill them with SIGKILL, pause them with SIGSTOP, restart them,
and, once the cluster is stopped, open every replica's LMDB to compare contents.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time

from coda.client.client import SyncClient
from coda.errors import CodaError
from coda.flow import config as config_mod
from coda.storage.env import ShardStore

HOST = "127.0.0.1"


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
                 seed: int | None = None, hosts: list[str] | None = None, wrap=None):
        """hosts: one address per node (default loopback); wrap(i, argv) -> argv lets a
        test launch node i differently (e.g. `ip netns exec NS` + argv)."""
        self.root = root
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
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.config_paths = [self._write_config(i) for i in range(nodes)]

    # --- configuration -------------------------------------------------------------------
    def config_mapping(self, i: int) -> dict:
        return {"node_id": self.nodes[i]["id"], "data_dir": os.path.join(self.root, "data"),
                "shards": self.shards, "secret": self.secret, "nodes": self.nodes,
                "raft": self.raft}

    def _write_config(self, i: int) -> str:
        cfg = config_mod.from_mapping(self.config_mapping(i))
        from coda.flow.cli import _to_toml
        path = os.path.join(self.root, f"{self.nodes[i]['id']}.toml")
        os.makedirs(self.root, exist_ok=True)
        with open(path, "w") as f:
            f.write(_to_toml(config_mod.to_mapping(cfg)))
        return path

    @property
    def address(self) -> str:
        return ",".join(n["client"] for n in self.nodes)

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
                                             stderr=subprocess.STDOUT)
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

    def alive(self, i: int) -> bool:
        return self.procs[i] is not None and self.procs[i].poll() is None

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    # --- observation ---------------------------------------------------------------------
    def client(self, node: int | None = None, timeout_s: float = 30.0) -> SyncClient:
        address = self.nodes[node]["client"] if node is not None else self.address
        return SyncClient(address, timeout_s=timeout_s)

    def status(self, via: int | None = None) -> dict:
        with self.client(via, timeout_s=5.0) as c:
            return c.cluster_status()

    def wait_leaders(self, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if all(s["leader"] for s in last["shards"]):
                    return last
            except CodaError as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"not every shard has a leader after {timeout_s} s: {last}")

    def leader_node(self, shard: int) -> int:
        leader = self.wait_leaders()["shards"][shard]["leader"]
        return next(i for i, n in enumerate(self.nodes) if n["client"] == leader)

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
        """shard -> [digest of node 0's LMDB, node 1's, ...]; the cluster must be stopped."""
        assert not any(self.alive(i) for i in range(len(self.nodes)))
        out = {}
        for shard in range(self.shards):
            out[shard] = []
            for i in range(len(self.nodes)):
                store = ShardStore(os.path.join(self.shard_dir(i, shard), "lmdb"))
                try:
                    out[shard].append(store.digest())
                finally:
                    store.close()
        return out

    def read_log(self, i: int) -> str:
        with open(self.log_path(i), errors="replace") as f:
            return f.read()
