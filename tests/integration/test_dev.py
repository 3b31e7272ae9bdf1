"""`coda-flow dev` as a user runs it: a subprocess that starts three node processes.

Checked: it announces CODA_ADDRESS and CODA_METRICS (once each, nothing else on stdout)
only when every shard has a leader; the metrics endpoints answer; SIGTERM and SIGINT stop
it with exit code 0 and no node process left; a restart on the same data dir keeps the
workflows; a restart asking for another shard count is refused; and a signal during
start-up stops it at once, without announcing an address.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from harness import HOST, free_port_block

pytestmark = pytest.mark.cluster

SHARDS = 2
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
PORT_SPAN = 311  # clients base..+2, metrics base+10..+12, Raft base+100*(i+1)+shard


# --- processes, read from /proc ----------------------------------------------------------

def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[1]), int(rest[19])


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> dict[int, int]:
    """pid -> start time of each live child of pid."""
    out = {}
    for child in _pids():
        stat = _stat(child)
        if stat is not None and stat[0] == pid:
            out[child] = stat[1]
    return out


def still_running(procs: dict[int, int]) -> list[int]:
    """The pids of `procs` (pid -> start time) that are still the same live process."""
    return [pid for pid, start in procs.items() if (_stat(pid) or (0, None))[1] == start]


def processes_using(data_dir: str) -> list[tuple[int, list[str]]]:
    """Live processes whose command line names something in data_dir (the dev nodes)."""
    out = []
    for pid in _pids():
        argv = _cmdline(pid)
        if any(data_dir in a for a in argv) and _stat(pid) is not None:
            out.append((pid, argv))
    return out


# --- the dev process -----------------------------------------------------------------------

class Dev:
    """One `coda-flow dev` run; stdout lines arrive on a queue, stderr goes to a file."""

    def __init__(self, data_dir: str, base_port: int, *extra: str, stderr_path: str):
        self.data_dir = data_dir
        self.stderr_path = stderr_path
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.nodes: dict[int, int] = {}
        with open(stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "coda.flow.cli", "dev", "--data-dir", data_dir,
                 "--base-port", str(base_port), *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def logs(self) -> str:
        out = []
        for i in (1, 2, 3):
            try:
                with open(os.path.join(self.data_dir, f"n{i}.log"), errors="replace") as f:
                    out.append(f"--- n{i}.log\n" + f.read()[-1500:])
            except FileNotFoundError:
                pass
        return "\n".join(out)

    def wait_announcement(self) -> dict[str, str]:
        """The two KEY=VALUE lines dev prints when the cluster is ready."""
        got: dict[str, str] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(got) < 2:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no address within {READY_TIMEOUT_S} s; stderr:\n"
                                     f"{self.stderr()}\n{self.logs()}") from None
            if line is None:
                raise AssertionError(f"dev exited ({self.proc.wait()}) before announcing; "
                                     f"stderr:\n{self.stderr()}\n{self.logs()}")
            key, sep, value = line.rstrip("\n").partition("=")
            assert sep and key in ("CODA_ADDRESS", "CODA_METRICS") and key not in got, line
            got[key] = value
        self.nodes = children(self.proc.pid)
        return got

    def wait_nodes_spawned(self, timeout_s: float = 30.0) -> dict[int, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = {pid: start for pid, start in children(self.proc.pid).items()
                     if "serve" in _cmdline(pid)}
            if len(found) == 3:
                self.nodes = found
                return found
            time.sleep(0.02)
        raise AssertionError(f"dev did not spawn 3 nodes within {timeout_s} s")

    def stop(self, sig: int) -> tuple[int, float]:
        """Send sig; returns (exit code, seconds until exit)."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dev ignored signal {sig} for {STOP_TIMEOUT_S} s") from None
        elapsed = time.monotonic() - sent
        self._reader.join(10)
        return code, elapsed

    def kill(self) -> None:
        for pid in [self.proc.pid] + still_running(self.nodes):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def assert_stopped_cleanly(dev: Dev, code: int, elapsed: float, *, served: bool = True) -> None:
    """dev exited 0 in time, none of its nodes is left, and (if they got to serve) each
    node's log ends with its own orderly stop."""
    assert code == 0, (code, dev.stderr(), dev.logs())
    assert elapsed < STOP_TIMEOUT_S, elapsed
    assert len(dev.nodes) == 3, dev.nodes
    assert still_running(dev.nodes) == [], (still_running(dev.nodes), dev.logs())
    assert processes_using(dev.data_dir) == [], processes_using(dev.data_dir)
    assert "Traceback" not in dev.stderr(), dev.stderr()
    for i in (1, 2, 3):
        with open(os.path.join(dev.data_dir, f"n{i}.log"), errors="replace") as f:
            log = f.read()
        assert "Traceback" not in log, log[-3000:]
        if served:
            assert log.rstrip().endswith(f"node n{i} stopped"), log[-3000:]


def coda(address: str, *args: str) -> subprocess.CompletedProcess:
    # No supervisor runs here: workflows are started to be stored, not run.
    env = dict(os.environ, CODA_ADDRESS=address, CODA_ALLOW_UNDECLARED_TYPES="1")
    return subprocess.run([sys.executable, "-m", "coda.client.cli", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)


def coda_json(address: str, *args: str):
    result = coda(address, "--json", *args)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture
def run_dev(tmp_path):
    """Factory: Dev(data dir, base port, *flags); every dev left running is killed."""
    made: list[Dev] = []

    def start(data_dir: str, base_port: int, *extra: str) -> Dev:
        dev = Dev(data_dir, base_port, *extra,
                  stderr_path=str(tmp_path / f"dev{len(made)}.stderr"))
        made.append(dev)
        return dev

    yield start
    for dev in made:
        if dev.proc.poll() is None or still_running(dev.nodes):
            dev.kill()


def check_ready(announced: dict[str, str], base: int) -> str:
    """The announcement names the three nodes, every shard has a leader, metrics answer."""
    address = announced["CODA_ADDRESS"]
    assert address == ",".join(f"{HOST}:{base + i}" for i in range(3)), announced
    metrics = announced["CODA_METRICS"].split(",")
    assert metrics == [f"http://{HOST}:{base + 10 + i}/metrics" for i in range(3)], announced

    status = coda_json(address, "cluster", "status")
    assert status["shard_count"] == SHARDS and len(status["shards"]) == SHARDS, status
    for s in status["shards"]:
        assert s["leader"], status
        assert [r["role"] for r in s["replicas"]].count("leader") == 1, status
    for url in metrics:
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
            assert "coda_shard_raft_role" in answer.read().decode(), url
    return address


def test_dev_announces_stops_and_keeps_data(tmp_path, run_dev):
    data_dir = str(tmp_path / "coda-data")
    base = free_port_block(PORT_SPAN, random.Random())

    dev = run_dev(data_dir, base, "--shards", str(SHARDS))
    address = check_ready(dev.wait_announcement(), base)
    assert sorted("serve" in _cmdline(pid) for pid in dev.nodes) == [True] * 3, dev.nodes
    started = coda_json(address, "workflow", "start", "dev_type", "--id", "dev-wf-1",
                        "--args", '{"n": 1}')
    assert started["started"] is True, started
    assert_stopped_cleanly(dev, *dev.stop(signal.SIGTERM))
    assert [line.split("=", 1)[0] for line in dev.stdout] == ["CODA_ADDRESS", "CODA_METRICS"], \
        dev.stdout

    # The shard count is fixed with the data dir.
    refused = subprocess.run([sys.executable, "-m", "coda.flow.cli", "dev", "--data-dir",
                              data_dir, "--base-port", str(base), "--shards", "3"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2, (refused.returncode, refused.stdout, refused.stderr)
    assert refused.stdout == "" and "Traceback" not in refused.stderr, refused
    assert f"created with {SHARDS} shards" in refused.stderr, refused.stderr
    assert "asked for 3" in refused.stderr, refused.stderr
    assert processes_using(data_dir) == []

    # Same data dir (shard count from the data dir): the workflow is still there.
    dev = run_dev(data_dir, base)
    address = check_ready(dev.wait_announcement(), base)
    info = coda_json(address, "workflow", "describe", "dev-wf-1")
    assert (info["run_id"], info["status"], info["workflow_type"]) == (
        started["run_id"], "RUNNING", "dev_type"), info
    assert_stopped_cleanly(dev, *dev.stop(signal.SIGINT))
    assert len(dev.stdout) == 2, dev.stdout


def test_signal_during_start_up_stops_at_once(tmp_path, run_dev):
    data_dir = str(tmp_path / "coda-data")
    base = free_port_block(PORT_SPAN, random.Random())
    dev = run_dev(data_dir, base, "--shards", str(SHARDS))
    dev.wait_nodes_spawned()  # signal handlers are set; no election can have finished yet
    code, elapsed = dev.stop(signal.SIGTERM)
    assert_stopped_cleanly(dev, code, elapsed, served=False)
    assert dev.stdout == [], dev.stdout  # no address announced for a cluster being stopped
