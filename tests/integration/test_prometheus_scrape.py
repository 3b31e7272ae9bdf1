"""A real Prometheus server scrapes a real cluster and supervisor, and promtool lints them.

A three-node cluster (2 shards) and a supervisor with two workers run workflows whose
tasks fail once (a retry) and go silent once (a heartbeat timeout, then a retry);
workflows of a type nobody serves wait in their queue (a queue with depth and age).
Then Debian's `prometheus` runs on 127.0.0.1 (a free port, its own data dir, a 1 s scrape
interval) against the three nodes' metrics endpoints and the supervisor's, and this test
checks, through Prometheus's HTTP API:
1. every target is up;
2. key series have samples with the values the run implies (one leader per shard,
   retries and timeouts counted, the waiting queue's depth and age, finished items);
3. every metric the Grafana dashboard names exists in what Prometheus scraped, and every
   dashboard expression evaluates without an error;
and, with `promtool check metrics`, that each endpoint's text passes the lint cleanly
(counters end in _total, units in names, HELP everywhere), and that the example scrape
config in deploy/prometheus passes `promtool check config`.

Needs /usr/bin/prometheus and promtool (`apt-get install prometheus`; scripts/test.sh
installs it as root). Without them it fails under CI=true and skips elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from coda.errors import AlreadyExists
from exec_helpers import wait_for, write_module
from harness import ROOT, SupervisorProcess, free_port_block, start_many

pytestmark = pytest.mark.cluster

SHARDS = 2
WORKFLOWS = 6
UNSERVED = 5
RESULT_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 60.0
DASHBOARD_TEST = Path(ROOT) / "tests" / "unit" / "test_grafana_dashboard.py"
EXAMPLE_CONFIG = Path(ROOT) / "deploy" / "prometheus" / "prometheus.yml"

FLOWS = '''
import asyncio

import coda
from coda.client.task_context import current_task


@coda.task(name="p_flaky", retry=coda.RetryPolicy(initial_interval=0.1, maximum_attempts=5))
def p_flaky(n):
    if current_task().attempt == 1:
        raise RuntimeError("the first attempt fails")
    return n


@coda.task(name="p_silent", heartbeat_timeout=1,
           retry=coda.RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def p_silent():
    if current_task().attempt == 1:
        await asyncio.sleep(10)  # no heartbeat: Flow times the attempt out
    return "ok"


@coda.workflow(name="p_flow")
async def p_flow(n):
    got = await coda.context.spawn_task(p_flaky, args={"n": n})
    if n == 0:
        await coda.context.spawn_task(p_silent)
    return got
'''


def tools() -> tuple[str, str]:
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        why = (f"{' and '.join(missing)} not installed: `apt-get install prometheus` "
               "(scripts/test.sh installs it when run as root)")
        if os.environ.get("CI"):
            pytest.fail(f"not run in CI: {why}")
        pytest.skip(why)
    return found["prometheus"], found["promtool"]


def dashboard_checks():
    """The dashboard test module (its PromQL name parser and dashboard loader)."""
    spec = importlib.util.spec_from_file_location("dashboard_checks", DASHBOARD_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_scrapes_every_endpoint_and_promtool_passes(make_cluster, tmp_path):
    prometheus_bin, promtool = tools()
    cluster = make_cluster(shards=SHARDS)
    cluster.start()
    cluster.wait_leaders()
    module_dir = write_module(tmp_path / "mods", "prom_flows", FLOWS)
    supervisor = SupervisorProcess(cluster, "prom_flows", root=str(tmp_path / "sup"),
                                   module_dir=module_dir, workers=2)
    server = None
    try:
        supervisor.start().wait_connected()
        run_workflows(cluster)
        targets = [n["metrics"] for n in cluster.nodes] + [f"127.0.0.1:{supervisor.health_port}"]
        server = PrometheusServer(prometheus_bin, tmp_path / "prometheus", targets).start()
        check_config(promtool, server.config_path)
        check_config(promtool, EXAMPLE_CONFIG)
        wait_targets_up(server, len(targets))
        check_key_series(server)
        check_dashboard(server)
        for target in targets:
            check_metrics_lint(promtool, target)
    finally:
        if server is not None:
            server.stop()
        if supervisor.proc is not None:
            supervisor.stop()


def run_workflows(cluster) -> None:
    with cluster.client() as client:
        handles = [client.start_workflow("p_flow", {"n": n}, workflow_id=f"prom-{n}")
                   for n in range(WORKFLOWS)]
        assert sorted(h.result(timeout=RESULT_TIMEOUT_S) for h in handles) == list(range(WORKFLOWS))
    # Nobody serves this type: its runs wait in their queue (depth, and an age that grows).
    start_many(cluster.address, [f"prom-wait-{i}" for i in range(UNSERVED)],
               workflow_type="p_unserved")
    with cluster.client() as client:
        # A second start of a running workflow: the shard refuses it (a proposal error).
        with pytest.raises(AlreadyExists):
            client.start_workflow("p_unserved", {}, workflow_id="prom-wait-0")


# --- the Prometheus server ----------------------------------------------------------------

class PrometheusServer:
    """`prometheus` on 127.0.0.1 with a config and a data dir of its own; stopped by PID."""

    def __init__(self, binary: str, root: Path, targets: list[str]):
        self.binary = binary
        self.root = root
        self.port = free_port_block(1, random.Random())
        self.targets = targets
        self.config_path = root / "prometheus.yml"
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        self.root.mkdir(parents=True, exist_ok=True)
        # Flow nodes and the supervisor as separate jobs, like deploy/prometheus does.
        self.config_path.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "coda-flow", "static_configs": [{"targets": self.targets[:-1]}]},
                {"job_name": "coda-supervisor",
                 "static_configs": [{"targets": self.targets[-1:]}]}]}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root)
        wait_for(self._ready, 30, f"prometheus ready on 127.0.0.1:{self.port}", poll_s=0.2)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with an error body
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- checks ---------------------------------------------------------------------------------

def check_config(promtool: str, path: Path) -> None:
    done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"promtool check config {path}:\n{done.stdout}{done.stderr}"


def wait_targets_up(server: PrometheusServer, count: int) -> None:
    def all_up():
        active = server.api("targets")["data"]["activeTargets"]
        return len(active) == count and all(t["health"] == "up" for t in active) and active
    try:
        wait_for(all_up, SCRAPE_TIMEOUT_S, "every target up", poll_s=0.5)
    except AssertionError:
        states = [(t["scrapeUrl"], t["health"], t.get("lastError"))
                  for t in server.api("targets")["data"]["activeTargets"]]
        raise AssertionError(f"targets not all up: {states}\n{server.log()}") from None


def value_of(server: PrometheusServer, expr: str) -> float:
    result = server.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


def wait_value(server: PrometheusServer, expr: str, predicate, what: str) -> float:
    """Prometheus sees new values one scrape later: poll until the predicate holds."""
    try:
        wait_for(lambda: predicate(value_of(server, expr)), SCRAPE_TIMEOUT_S, what, poll_s=0.5)
    except AssertionError:
        raise AssertionError(f"{what}: {expr} is {value_of(server, expr)}") from None
    return value_of(server, expr)


def check_key_series(server: PrometheusServer) -> None:
    # Raft: every node reports every shard; exactly one leader per shard.
    assert len(server.query("coda_shard_raft_role")) == 3 * SHARDS
    wait_value(server, "count(coda_shard_raft_role == 2)", lambda v: v == SHARDS,
               "one leader per shard")
    wait_value(server, "min(coda_shard_commit_index)", lambda v: v > 0, "commits")
    # Execution: the first attempts failed or went silent, and were retried.
    wait_value(server, 'sum(coda_shard_retries_total{of="task"})', lambda v: v >= WORKFLOWS + 1,
               "task retries")
    wait_value(server, 'sum(coda_shard_timeouts_total{timeout="heartbeat"})', lambda v: v >= 1,
               "heartbeat timeouts")
    wait_value(server, 'sum(coda_shard_reported_failures_total{item="task"})',
               lambda v: v >= WORKFLOWS, "task failures reported")
    wait_value(server, "sum(coda_shard_dispatched_total)", lambda v: v >= 3 * WORKFLOWS,
               "dispatches")
    wait_value(server, 'sum(coda_shard_completions_total{outcome="accepted"})',
               lambda v: v >= 3 * WORKFLOWS, "accepted completions")
    wait_value(server, 'sum(coda_shard_proposal_errors_total{code="ALREADY_EXISTS"})',
               lambda v: v >= 1, "the duplicate start")
    # The unserved queue: each replica of each shard holds its part of the waiting runs.
    wait_value(server, 'sum(max by (shard) (coda_shard_queue_depth{queue="wf/p_unserved"}))',
               lambda v: v == UNSERVED, "queue depth")
    wait_value(server, 'max(coda_shard_queue_oldest_age_seconds{queue="wf/p_unserved"})',
               lambda v: v > 0, "queue age")
    # gRPC, by method and code.
    wait_value(server, 'sum(coda_grpc_requests_total{method="StartWorkflow",code="OK"})',
               lambda v: v >= WORKFLOWS + UNSERVED, "StartWorkflow requests")
    # The supervisor.
    wait_value(server, 'sum(coda_supervisor_items_finished_total{item="task",outcome="completed"})',
               lambda v: v >= WORKFLOWS + 1, "tasks completed on the supervisor")
    wait_value(server, "sum(coda_supervisor_session_connected)", lambda v: v == SHARDS,
               "sessions connected")
    wait_value(server, "sum(coda_supervisor_worker_up)", lambda v: v == 2, "workers up")
    wait_value(server, "sum(coda_supervisor_completion_batch_items_count)", lambda v: v >= 1,
               "completion batches")
    wait_value(server, 'count(process_resident_memory_bytes{job=~"coda-.*"})', lambda v: v == 4,
               "process metrics of every target")


def check_dashboard(server: PrometheusServer) -> None:
    checks = dashboard_checks()
    dashboard = checks.load_dashboard()
    scraped = set(server.api("label/__name__/values")["data"])
    exprs = [t["expr"] for p in checks.all_panels(dashboard) for t in p.get("targets", [])]
    missing = {name for expr in exprs for name in checks.metric_names(expr)} - scraped
    assert not missing, f"the dashboard names metrics Prometheus never scraped: {sorted(missing)}"
    for expr in exprs:
        concrete = (expr.replace("$__rate_interval", "1m").replace("$shard", ".*")
                    .replace("$job", ".*"))
        body = server.api("query", query=concrete)
        assert body["status"] == "success", f"dashboard query {concrete!r}: {body}"


def check_metrics_lint(promtool: str, target: str) -> None:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as answer:
        text = answer.read()
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=60)
    output = (done.stdout + done.stderr).decode(errors="replace")
    print(f"promtool check metrics {target}: exit {done.returncode} {output.strip() or '(clean)'}")
    assert done.returncode == 0 and not output.strip(), \
        f"promtool check metrics on {target} (exit {done.returncode}):\n{output}"
