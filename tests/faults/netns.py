"""Hosts on one Linux machine: network namespaces on a private bridge, and partitions.

    net = Net(nodes=3, clients=1)      # namespaces, veths, bridge; ~0.2 s
    net.setup()
    argv = net.run_in(net.node_ns[0], [sys.executable, "-m", "..."])
    net.isolate(0)                     # node 0 <-/-> every other node; clients still reach it
    net.heal()
    net.teardown()                     # also registered with atexit; idempotent

Layout (shared/notes/faults.md): one namespace holds a bridge `br0`; each node and client
namespace holds one veth end `eth0` with an address in 10.77.X.0/24 (X random per run) and
`lo` up. The root namespace gets nothing: from it these addresses would leave by the default
route, so every packet to them must come from inside a namespace (run the test's client side
in a client namespace).

Partitions are Jepsen's: `iptables -w -A INPUT -s PEER -j DROP` inside the namespaces on
both sides of a cut; `heal()` flushes them. Rules live only in node namespaces, so a client
namespace keeps reaching every node.

Names: every namespace of a run is `codaft-<owner pid>-<owner start time>-<random>-<role>`.
`cleanup_stale()` (run by every setup, and by `python netns.py cleanup`) removes namespaces of
runs whose owner process is gone: it kills the processes left inside them (only that dead
run can have put them there) and deletes the namespaces. A live run's teardown kills only
the processes it was given with `track()` and deletes its own namespaces.
"""

from __future__ import annotations

import atexit
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time

TAG = "codaft"
BRIDGE = "br0"
NODE_HOST_BASE = 11      # node i is .11+i
CLIENT_HOST_BASE = 201   # client j is .201+j
IP_TIMEOUT_S = 10.0


class NetnsUnavailable(RuntimeError):
    """This machine can't run namespace tests (not root, no `ip netns`)."""


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _start_time(pid: int) -> str | None:
    """Kernel start time of a process (clock ticks since boot); tells pid reuse apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def list_namespaces() -> list[str]:
    proc = _run(["ip", "netns", "list"], check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def unavailable_reason() -> str | None:
    """Why namespace tests can't run here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{TAG}-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        made = _run(["ip", "netns", "add", probe], check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` could not run: {exc!r}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {(made.stderr or made.stdout).strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _pids_in(ns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _delete_namespace(ns: str) -> None:
    _run(["ip", "netns", "del", ns], check=False)


def cleanup_stale(prefix: str = TAG + "-", verbose: bool = False) -> list[str]:
    """Delete namespaces starting with `prefix` whose owning run is gone; returns their names.

    A namespace of a live run (its owner pid exists with the same start time) is left alone.
    """
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(prefix):
            continue
        parts = ns.split("-")
        # codaft-<pid>-<start>-<rand>-<role>; the probe of unavailable_reason: codaft-probe-<pid>-..
        try:
            owner = int(parts[2] if parts[1] == "probe" else parts[1])
            start = None if parts[1] == "probe" else parts[2]
        except (IndexError, ValueError):
            continue
        alive_start = _start_time(owner)
        if alive_start is not None and (start is None or alive_start == start):
            continue
        for pid in _pids_in(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _delete_namespace(ns)
        removed.append(ns)
        if verbose:
            print(f"removed stale namespace {ns}", file=sys.stderr)
    return removed


class Net:
    """N node namespaces and M client namespaces on one bridge, with partitions."""

    def __init__(self, nodes: int = 3, clients: int = 1, subnet_octet: int | None = None):
        if not 1 <= nodes <= 50 or not 0 <= clients <= 50:
            raise ValueError("1..50 nodes and 0..50 clients")
        self.run_id = f"{os.getpid()}-{_start_time(os.getpid())}-{secrets.token_hex(3)}"
        self.prefix = f"{TAG}-{self.run_id}-"
        octet = random.SystemRandom().randrange(256) if subnet_octet is None else subnet_octet
        self.subnet = f"10.77.{octet}"
        self.bridge_ns = self.prefix + "br"
        self.node_ns = [self.prefix + f"n{i}" for i in range(nodes)]
        self.client_ns = [self.prefix + f"c{j}" for j in range(clients)]
        self.node_ip = [f"{self.subnet}.{NODE_HOST_BASE + i}" for i in range(nodes)]
        self.client_ip = [f"{self.subnet}.{CLIENT_HOST_BASE + j}" for j in range(clients)]
        self._created: list[str] = []
        self._tracked: list = []
        self._cuts: set[tuple[int, int]] = set()
        self._torn_down = False

    # --- lifecycle -----------------------------------------------------------------------
    def setup(self) -> "Net":
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        if shutil.which("iptables") is None:
            raise RuntimeError("iptables is not installed; partitions need it "
                               "(apt-get install -y iptables; scripts/test.sh does this as root)")
        cleanup_stale()
        atexit.register(self.teardown)
        started = time.monotonic()
        try:
            self._add_ns(self.bridge_ns)
            br = ["ip", "-n", self.bridge_ns]
            _run(br + ["link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
            _run(br + ["link", "set", BRIDGE, "up"])
            hosts = list(zip(self.node_ns, self.node_ip)) + list(zip(self.client_ns, self.client_ip))
            for port, (ns, ip) in enumerate(hosts):
                self._add_ns(ns)
                # Created inside the namespaces directly: no names ever appear in the root one.
                _run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth",
                      "peer", "name", f"p{port}", "netns", self.bridge_ns])
                _run(br + ["link", "set", f"p{port}", "master", BRIDGE])
                _run(br + ["link", "set", f"p{port}", "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        except BaseException:
            self.teardown()
            raise
        self.setup_s = time.monotonic() - started
        return self

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._created.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def track(self, proc) -> None:
        """A subprocess.Popen (or pid) that teardown must kill if it is still running."""
        self._tracked.append(proc)

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for proc in self._tracked:
            try:
                if isinstance(proc, int):
                    os.kill(proc, signal.SIGKILL)
                elif proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for ns in reversed(self._created):
            others = _pids_in(ns)
            if others:
                # Not ours to kill: say so. The namespace's name goes; its veth lives on
                # until those processes exit.
                print(f"netns teardown: {ns} still holds pids {others} that this run did "
                      "not start; deleting the namespace anyway", file=sys.stderr)
            _delete_namespace(ns)
        self._created.clear()
        atexit.unregister(self.teardown)

    def __enter__(self) -> "Net":
        return self.setup()

    def __exit__(self, *exc) -> None:
        self.teardown()

    # --- running programs ----------------------------------------------------------------
    @staticmethod
    def run_in(ns: str, argv: list[str]) -> list[str]:
        """argv prefixed to run in `ns`. `ip netns exec` execs, so a Popen's pid is argv's."""
        return ["ip", "netns", "exec", ns, *argv]

    def wrap_node(self, i: int, argv: list[str]) -> list[str]:
        """For harness.Cluster(wrap=net.wrap_node): node i runs in node namespace i."""
        return self.run_in(self.node_ns[i], argv)

    # --- faults --------------------------------------------------------------------------
    def cut(self, a: int, b: int) -> None:
        """Drop all traffic between nodes a and b (both directions, both namespaces)."""
        if a == b or (min(a, b), max(a, b)) in self._cuts:
            return
        for me, peer in ((a, b), (b, a)):
            _run(self.run_in(self.node_ns[me], ["iptables", "-w", "-A", "INPUT", "-s",
                                                self.node_ip[peer], "-j", "DROP"]))
        self._cuts.add((min(a, b), max(a, b)))

    def isolate(self, i: int, from_nodes: list[int] | None = None) -> None:
        """Cut node i off from the other nodes (or `from_nodes`); clients still reach it."""
        others = range(len(self.node_ns)) if from_nodes is None else from_nodes
        for j in others:
            self.cut(i, j)

    def heal(self) -> None:
        for ns in self.node_ns:
            _run(self.run_in(ns, ["iptables", "-w", "-F", "INPUT"]))
        self._cuts.clear()

    def rules(self) -> dict[str, str]:
        """Each node namespace's iptables rules (for failure messages)."""
        return {ns: _run(self.run_in(ns, ["iptables", "-w", "-S", "INPUT"]), check=False).stdout
                for ns in self.node_ns}


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "cleanup":
        prefix = argv[1] if len(argv) > 1 else TAG + "-"
        if not prefix.startswith(TAG + "-"):
            print(f"refusing: prefix must start with {TAG}-", file=sys.stderr)
            return 2
        removed = cleanup_stale(prefix, verbose=True)
        print(f"removed {len(removed)} stale namespace(s)")
        return 0
    if len(argv) >= 1 and argv[0] == "check":
        reason = unavailable_reason()
        print(reason or "network namespaces are available")
        return 1 if reason else 0
    print(f"usage: {os.path.basename(sys.argv[0])} cleanup [{TAG}-PREFIX] | check",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
