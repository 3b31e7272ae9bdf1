"""The hosts of a run: three Flow nodes, a supervisor and the client, and the levers the
nemeses pull (jepsen.nemesis calls `kill`, `restart`, `leader_of`, `set_clock`, ...).

As root with network namespaces available, each node runs in a namespace of its own on a
private bridge and the supervisor and client in a control namespace (tests/faults/netns.py);
otherwise everything runs on loopback and only process, clock and disk faults are
possible: `mode` and `available` say which, and the verdict reports it, never silently.

Clock faults start every node under libfaketime (its live timestamp file, one per node,
monotonic time left real) with a sitecustomize that gives time.sleep a select() body (it
raises EINVAL under libfaketime: shared/notes/faults.md). Disk faults mount each node's
data directory on its own LazyFS, so one node or all can lose what they never fsynced.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for sub in ("tests/integration", "tests/faults"):
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)

import netns  # noqa: E402
from harness import Cluster  # noqa: E402

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
FAKETIME_SITE = os.path.join(ROOT, "jepsen", "faketime_site")


def capabilities() -> dict[str, str | None]:
    """Each capability -> None when available here, else why not."""
    out = {"netns": netns.unavailable_reason() if os.geteuid() == 0 else "not root",
           "faketime": None if os.path.exists(FAKETIME_LIB) else
           "libfaketime is not installed (apt-get install faketime libfaketime)",
           "lazyfs": None}
    if out["netns"] is None and shutil.which("iptables") is None:
        out["netns"] = "iptables is not installed"
    try:
        from lazyfs import unavailable_reason
        out["lazyfs"] = unavailable_reason()
    except ImportError as exc:
        out["lazyfs"] = f"lazyfs helper missing: {exc}"
    if os.geteuid() != 0 and out["lazyfs"] is None:
        out["lazyfs"] = "not root"
    return out


class Hosts:
    def __init__(self, out_dir: str, *, shards: int, want: set[str], seed: int):
        caps = capabilities()
        missing = {k: caps[k] for k in want if caps.get(k)}
        if missing:
            raise RuntimeError(f"this nemesis needs {sorted(missing)}: {missing}")
        self.available = {k for k, why in caps.items() if why is None}
        self.out_dir = out_dir
        self.node_count, self.shards = 3, shards
        self.mode = "netns" if "netns" in self.available else "loopback"
        self.net = netns.Net(nodes=3, clients=1).setup() if self.mode == "netns" else None
        self.clock_files = [os.path.join(out_dir, f"clock-n{i + 1}") for i in range(3)]
        self.faketime = "faketime" in want
        for path in self.clock_files:
            with open(path, "w") as f:
                f.write("+0\n")
        self.lazyfs = self._mount_lazyfs() if "lazyfs" in want else None
        self.cluster = Cluster(os.path.join(out_dir, "cluster"), shards=shards, seed=seed,
                               hosts=self.net.node_ip if self.net else None,
                               wrap=self._wrap_node)
        self.log_lock = threading.Lock()
        self.events: list[dict] = []
        self.stopped: list[int] = []
        self.paused: list[int] = []
        self.strobe = None
        self._status_probe = None

    # --- processes -------------------------------------------------------------------------
    def _wrap_node(self, i: int, argv: list[str]) -> list[str]:
        if self.faketime:
            argv = ["env", f"LD_PRELOAD={FAKETIME_LIB}",
                    f"FAKETIME_TIMESTAMP_FILE={self.clock_files[i]}", "FAKETIME_NO_CACHE=1",
                    "FAKETIME_DONT_FAKE_MONOTONIC=1",
                    f"PYTHONPATH={FAKETIME_SITE}:{os.environ.get('PYTHONPATH', '')}", *argv]
        return self.net.wrap_node(i, argv) if self.net else argv

    def in_control(self, argv: list[str]) -> list[str]:
        """argv run where the client and supervisor live."""
        return self.net.run_in(self.net.client_ns[0], argv) if self.net else argv

    def start_cluster(self) -> None:
        self.cluster.start()
        if self.net:
            for proc in self.cluster.procs:
                self.net.track(proc)

    def kill(self, i: int, sig: int) -> None:
        proc = self.cluster.procs[i]
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        self.cluster.start(i)
        if self.net:
            self.net.track(self.cluster.procs[i])

    def net_run(self, i: int, argv: list[str]) -> None:
        subprocess.run(self.net.run_in(self.net.node_ns[i], argv), check=True,
                       capture_output=True, timeout=10)

    def set_clock(self, i: int, offset_s: int) -> None:
        tmp = self.clock_files[i] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{offset_s:+d}s\n" if offset_s else "+0\n")
        os.replace(tmp, self.clock_files[i])  # libfaketime never reads a half-written file

    # --- disks -----------------------------------------------------------------------------
    def _mount_lazyfs(self) -> list:
        from lazyfs import LazyFS
        mounts = []
        # The control sockets live in a short dir: an AF_UNIX path has at most 107 bytes,
        # and results dirs (pytest's tmp dirs above all) can be longer.
        sockets = tempfile.mkdtemp(prefix="coda-lazyfs-")
        for i in range(3):
            fs = LazyFS(backing=os.path.join(self.out_dir, "disk", f"n{i + 1}"),
                        mountpoint=os.path.join(self.out_dir, "cluster", "data", f"n{i + 1}"),
                        state_dir=os.path.join(sockets, f"n{i + 1}"))
            fs.mount()
            mounts.append(fs)
        return mounts

    def power_cut(self, i: int) -> dict:
        return self.lazyfs[i].power_cut()

    # --- observation -----------------------------------------------------------------------
    def status(self) -> dict:
        """Cluster status as seen from the control host."""
        argv = self.in_control([sys.executable, "-m", "jepsen.status", self.cluster.address])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"status probe failed: {done.stderr[-500:]}")
        return json.loads(done.stdout)

    def leader_of(self, shard: int) -> int | None:
        try:
            leader = self.status()["shards"][shard]["leader"]
        except (RuntimeError, KeyError, IndexError, ValueError, subprocess.TimeoutExpired):
            return None
        return self.cluster.node_index(leader) if leader else None

    def wait_leaders(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if all(s["leader"] for s in last["shards"]):
                    return last
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"not every shard has a leader after {timeout_s} s: {last}")

    def log(self, event: str, kind: str, detail: dict) -> None:
        with self.log_lock:
            self.events.append({"time_ns": time.monotonic_ns(), "event": event, "kind": kind,
                                "detail": detail})

    # --- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        try:
            for i in range(3):
                self.kill(i, signal.SIGCONT)
            self.cluster.stop(timeout_s=20)
        except Exception:  # a node that will not stop is killed below; close never raises
            pass
        finally:
            self.cluster.close()
            for i, fs in enumerate(self.lazyfs or ()):
                fs.cleanup()
                with open(os.path.join(self.out_dir, "logs", f"lazyfs-n{i + 1}.log"), "w") as f:
                    f.write(fs.read_log())
            if self.net:
                self.net.teardown()
