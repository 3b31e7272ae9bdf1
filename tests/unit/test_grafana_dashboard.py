"""The Grafana dashboard (deploy/grafana/coda-dashboard.json) names only metrics the code
defines: every panel's expressions and every template query are parsed for metric names,
and each must be a series that the live prometheus_client registries of a Flow node and a
supervisor expose (collected from the real families, so a family renamed in code, or a
typo in a panel, fails here)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from coda.flow import metrics as flow_metrics
from coda.supervisor.metrics import SupervisorMetrics
from coda.supervisor.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "coda-dashboard.json"

# Series Prometheus itself adds to every target: not defined by our code.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                 "scrape_samples_post_metric_relabeling", "scrape_series_added"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan", "atan2",
                # aggregation operators: `sum by (x) (...)` puts the label list first
                "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"), "info": ("_info",),
            "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "stateset": ("",),
            "gauge": ("",), "unknown": ("",)}


# --- PromQL: the metric names an expression selects --------------------------------------

def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in matchers or by/on lists), durations or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)   # label matchers (and $variables in them)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        word = match.group()
        if expr[match.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(word)
    return names


def template_metric_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query."""
    found = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    if found:
        return metric_names(found.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()
    found = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    return metric_names(found.group(1) if found else query)


def test_the_name_parser_finds_metrics_and_nothing_else():
    assert metric_names('histogram_quantile(0.99, sum by (le, method) '
                        '(rate(coda_grpc_request_seconds_bucket{code="OK"}[$__rate_interval])))') \
        == {"coda_grpc_request_seconds_bucket"}
    assert metric_names("max by (shard) (a_total - on (shard) group_left (x) b) / "
                        "sum(c offset 5m) by (q) > bool 2") == {"a_total", "b", "c"}
    assert metric_names('up{job=~"$job"} and ignoring (instance) d:rule') == {"up", "d:rule"}
    assert template_metric_names("label_values(coda_shard_raft_role, shard)") == \
        {"coda_shard_raft_role"}
    assert template_metric_names("label_values(shard)") == set()


# --- what the code defines --------------------------------------------------------------

class _FakeReplica:
    shard = 0

    def queue_stats(self, queues_max):
        return {"wf/x": (3, int(time.time() * 1000) - 1500)}


class _FakePool:
    def worker_pids(self):
        return [os.getpid()]

    def worker_restarts(self):
        return 0

    def statistics(self):
        return {"workers": {0: {"pid": os.getpid(), "in_flight": 1}}, "pending": 0,
                "deaths": 0, "restarts": 0}


def exposed_names(families) -> set[str]:
    names = set()
    for family in families:
        for suffix in SUFFIXES[family.type]:
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def defined_names() -> set[str]:
    from prometheus_client import REGISTRY, CollectorRegistry
    flow_metrics.init_shard("0")
    queues = CollectorRegistry()
    queues.register(flow_metrics.QueueDepthCollector([_FakeReplica()]))
    supervisor = Supervisor(["127.0.0.1:1"], "m", workers=1, slots=4, build_id="b",
                            supervisor_id="s", pool=_FakePool(), metrics=SupervisorMetrics())
    supervisor.attach_shards(2)
    names = exposed_names(list(REGISTRY.collect()) + list(queues.collect())
                          + list(supervisor.metrics.registry.collect()))
    # The families the brief promises are there (else the check below is vacuous).
    for expected in ("coda_shard_raft_role", "coda_shard_queue_oldest_age_seconds",
                     "coda_supervisor_worker_cpu_seconds_total", "process_cpu_seconds_total",
                     "coda_supervisor_completion_batch_items_bucket"):
        assert expected in names, expected
    return names


def unknown_names(expr: str, defined: set[str]) -> set[str]:
    return {n for n in metric_names(expr) if n not in defined and n not in SCRAPE_SERIES}


# --- the dashboard ----------------------------------------------------------------------

def load_dashboard() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def test_every_panel_names_only_defined_metrics(defined_names):
    dashboard = load_dashboard()
    checked = 0
    problems = []
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            if not names:
                problems.append(f"{panel['title']!r}: no metric in {target['expr']!r}")
            missing = unknown_names(target["expr"], defined_names)
            if missing:
                problems.append(f"{panel['title']!r} names undefined {sorted(missing)} "
                                f"in {target['expr']!r}")
            checked += 1
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) \
                else variable["query"]
            missing = template_metric_names(query) - defined_names - SCRAPE_SERIES
            if missing:
                problems.append(f"variable {variable['name']!r} names undefined {sorted(missing)}")
    assert not problems, "\n".join(problems)
    assert checked >= 40


def test_the_check_fails_for_a_metric_the_code_does_not_define(defined_names):
    assert unknown_names("sum(rate(coda_shard_dispatched_total[1m]))", defined_names) == set()
    assert unknown_names("sum(rate(coda_shard_dispatched[1m]))", defined_names) == \
        {"coda_shard_dispatched"}  # the family name, not a series: counters end in _total
    assert unknown_names("coda_shard_no_such_metric", defined_names) == {"coda_shard_no_such_metric"}


def test_the_dashboard_is_importable_with_a_prometheus_datasource_variable():
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_dashboard_covers_what_operators_asked_for():
    """Issue #6, section 3: Raft state, commit/apply, queue depth and age, dispatch and
    completion rates, retries, timeouts, gRPC, supervisors' in-flight, caches, batches."""
    exprs = " ".join(t["expr"] for p in all_panels(load_dashboard()) for t in p.get("targets", []))
    for name in ("coda_shard_raft_role", "coda_shard_commit_index", "coda_shard_applied_index",
                 "coda_shard_queue_depth", "coda_shard_queue_oldest_age_seconds",
                 "coda_shard_dispatched_total", "coda_shard_completions_total",
                 "coda_shard_retries_total", "coda_shard_timeouts_total",
                 "coda_grpc_requests_total", "coda_grpc_request_seconds_bucket",
                 "coda_supervisor_in_flight", "coda_supervisor_history_cache_reads_total",
                 "coda_supervisor_broadcast_reads_total",
                 "coda_supervisor_completion_batch_items_sum"):
        assert name in exprs, name
