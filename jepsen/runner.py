"""One jepsen run: hosts up, supervisor and client started, the nemesis schedule played,
healed, final reads, then the history assembled and checked into a results directory:

    results/<stamp>-<workloads>-<nemesis>-s<seed>/
        history.jsonl    every op (client ops, nemesis events, task executions), in time
        nemesis.jsonl    what the nemesis did, with its detail
        verdict.json     each checker's result and the overall verdict
        timeline.html    ops over time per workload, fault windows shaded
        logs/            node, supervisor and client logs
"""

from __future__ import annotations

import json
import os
import queue
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time

from jepsen import nemesis as nemesis_mod
from jepsen.hosts import ROOT, Hosts

WORKLOADS = ("workflows", "queue", "timers", "register", "counter")


def results_dir(base: str, workloads: list[str], nemesis: str, seed: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"{stamp}-{'+'.join(workloads) if len(workloads) < 5 else 'all'}-{nemesis}-s{seed}"
    path = os.path.join(base, name)
    os.makedirs(os.path.join(path, "logs"), exist_ok=True)
    return path


class Run:
    def __init__(self, *, workloads: list[str], nemesis: str, time_s: float, seed: int,
                 out_base: str, shards: int = 2, progress=print):
        self.workloads, self.nemesis, self.time_s, self.seed = workloads, nemesis, time_s, seed
        self.shards = shards
        self.dir = results_dir(out_base, workloads, nemesis, seed)
        self.progress = progress
        self.exec_log = os.path.join(self.dir, "exec.jsonl")
        self.client_history = os.path.join(self.dir, "client.jsonl")
        self.hosts: Hosts | None = None
        self.supervisor = None
        self.client = None

    def execute(self) -> dict:
        """Run, check, report; returns the verdict. The hosts are torn down whatever
        happens; an error in the run is recorded in the verdict as invalid."""
        from jepsen import report
        started = time.monotonic()
        error = None
        try:
            t0_ns = self._run()
        except Exception as exc:  # noqa: BLE001 - the verdict says what broke, then we raise
            error = exc
            t0_ns = getattr(self, "t0_ns", time.monotonic_ns())
        finally:
            self._teardown()
        verdict = report.finish(self, t0_ns, error, time.monotonic() - started)
        if error is not None:
            raise error
        return verdict

    def _run(self) -> int:
        from jepsen.hosts import capabilities
        if self.nemesis == "mix":  # mix draws from whatever these hosts can do
            want = {k for k, why in capabilities().items() if why is None}
        else:
            want = nemesis_mod.needs(self.nemesis)
        self.hosts = Hosts(self.dir, shards=self.shards, want=want, seed=self.seed)
        self.progress(f"hosts: {self.hosts.mode} (can: {sorted(self.hosts.available)}); "
                      f"results in {self.dir}")
        self.hosts.start_cluster()
        self.hosts.wait_leaders()
        self._start_supervisor()
        self.t0_ns = time.monotonic_ns()
        schedule = nemesis_mod.Schedule(self.nemesis, self.hosts, self.time_s, self.seed)
        self._start_client(self.t0_ns)
        schedule.start(self.t0_ns / 1e9)
        self._wait_client_line("ran", self.time_s + 120)
        schedule.join(timeout_s=60)
        schedule.halt()
        if schedule.error is not None:
            raise RuntimeError(f"the nemesis failed: {schedule.error!r}") from schedule.error
        self._heal_all()
        self.progress("healed; final reads ...")
        self.client.stdin.write("final\n")
        self.client.stdin.flush()
        self._wait_client_line("done", 240)
        return self.t0_ns

    def _heal_all(self) -> None:
        """Whatever the schedule left: heal, resume, restart, reset clocks; then leaders."""
        hosts = self.hosts
        if hosts.net:
            hosts.net.heal()
        nemesis_mod.clock_stop(hosts) if hosts.faketime else None
        nemesis_mod.process_stop(hosts)
        for i in range(hosts.node_count):
            if not hosts.cluster.alive(i):
                hosts.restart(i)
        hosts.wait_leaders(timeout_s=90)

    def _start_supervisor(self) -> None:
        port = 7190 if self.hosts.net else _free_port()
        sid = f"jepsen-sup-{secrets.token_hex(3)}"
        argv = self.hosts.in_control([
            sys.executable, "-m", "coda.client.cli", "supervisor", "run", "jepsen.workflows",
            "--workers", "2", "--health-port", str(port), "--supervisor-id", sid,
            "--drain-s", "2"])
        env = dict(os.environ, CODA_ADDRESS=self.hosts.cluster.address,
                   JEPSEN_EXEC_LOG=self.exec_log,
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        log = open(os.path.join(self.dir, "logs", "supervisor.log"), "ab")
        self.supervisor = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=ROOT)
        if self.hosts.net:
            self.hosts.net.track(self.supervisor)
        self._wait_supervisor(port)

    def _wait_supervisor(self, port: int) -> None:
        deadline = time.monotonic() + 60
        argv = self.hosts.in_control([sys.executable, "-m", "jepsen.status", "--supervisor",
                                      str(port)])
        while time.monotonic() < deadline:
            if self.supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited ({self.supervisor.returncode})")
            done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=20)
            try:
                if json.loads(done.stdout or "{}").get("healthy"):
                    return
            except ValueError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the supervisor did not connect to every shard in 60 s")

    def _start_client(self, t0_ns: int) -> None:
        cfg = {"address": self.hosts.cluster.address, "workloads": self.workloads,
               "duration_s": self.time_s, "t0_ns": t0_ns, "seed": self.seed, "root": ROOT,
               "history_path": self.client_history, "run_tag": f"j{self.seed}-{secrets.token_hex(2)}"}
        path = os.path.join(self.dir, "client-config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        log = open(os.path.join(self.dir, "logs", "client.log"), "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        self.client = subprocess.Popen(
            self.hosts.in_control([sys.executable, "-m", "jepsen.client", path]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            cwd=ROOT)
        if self.hosts.net:
            self.hosts.net.track(self.client)
        self.client_lines: queue.Queue = queue.Queue()

        def read_lines() -> None:  # a thread: readline has no timeout of its own
            for line in self.client.stdout:
                self.client_lines.put(line)
            self.client_lines.put(None)
        threading.Thread(target=read_lines, daemon=True).start()

    def _wait_client_line(self, word: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.client_lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the client did not say {word!r} in {timeout_s} s") from None
            if line is None:
                raise RuntimeError(f"the client exited ({self.client.wait()}) before {word!r}; "
                                   f"see {self.dir}/logs/client.log")
            if line.strip() == word:
                return

    def _teardown(self) -> None:
        for proc in (self.client, self.supervisor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.hosts is not None:
            self.hosts.close()
            for i, node in enumerate(self.hosts.cluster.nodes):
                src = self.hosts.cluster.log_path(i)
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(self.dir, "logs", f"{node['id']}.log"))


def _free_port() -> int:
    from harness import free_port_block
    return free_port_block(1, random.Random())
