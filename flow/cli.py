"""`coda-flow`: run one node of a cluster (`serve`) or a local three-node cluster (`dev`)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time

import click

from coda.errors import CodaError, ConfigError
from coda.flow import config as config_mod
from coda.flow import limits

DEV_NODES = 3
DEV_READY_TIMEOUT_S = 60.0
DEV_STOP_TIMEOUT_S = 15.0


@click.group()
def main() -> None:
    """Coda Flow server."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _parse_node(text: str) -> dict:
    # ID=CLIENT,RAFT,METRICS
    try:
        node_id, rest = text.split("=", 1)
        client, raft, metrics_addr = rest.split(",")
    except ValueError:
        raise ConfigError(f"--node must be ID=CLIENT_HOST:PORT,RAFT_HOST:PORT,METRICS_HOST:PORT, "
                          f"got {text!r}", field="node") from None
    return {"id": node_id, "client": client, "raft": raft, "metrics": metrics_addr}


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config file (see coda.flow.config); flags override it.")
@click.option("--node-id", help="This node's id (one of the --node ids).")
@click.option("--data-dir", help="Directory for this node's Raft logs, snapshots and LMDB.")
@click.option("--shards", type=int, help="Shard count, fixed when the cluster is created.")
@click.option("--secret-file", help="File holding the cluster secret (protects Raft ports).")
@click.option("--node", "nodes", multiple=True,
              help="A cluster member: ID=CLIENT_HOST:PORT,RAFT_HOST:PORT,METRICS_HOST:PORT. "
                   "Repeat for every node, this one included.")
@click.option("--log-level", default="info", show_default=True)
def serve(config_path, node_id, data_dir, shards, secret_file, nodes, log_level) -> None:
    """Run one node of a Flow cluster."""
    _setup_logging(log_level)
    try:
        raw = config_mod.read_toml(config_path) if config_path else {}
        overrides = {"node_id": node_id, "data_dir": data_dir, "shards": shards,
                     "secret_file": secret_file}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        if nodes:
            raw["nodes"] = [_parse_node(n) for n in nodes]
        if secret_file:
            raw.pop("secret", None)
        if not raw.get("secret") and not raw.get("secret_file") and os.environ.get("CODA_CLUSTER_SECRET"):
            raw["secret"] = os.environ["CODA_CLUSTER_SECRET"]
        cfg = config_mod.from_mapping(raw, origin=config_path or "flags")
    except CodaError as exc:
        raise click.UsageError(f"bad configuration: {exc.message}") from None
    from coda.flow import node  # heavy imports only once the config is known to be good
    node.run(cfg)


# --- dev ---------------------------------------------------------------------------------

def dev_shards_default() -> int:
    """A dev cluster's three nodes share one machine: more shards than cores only split
    the batches and multiply per-shard costs (tick threads, heartbeats, one LMDB commit
    per shard per tick). On 2 cores W-seq measured 266-284 wf/s with 2 shards against
    188-220 with 4 (bench/bench_perf.py)."""
    return max(1, min(4, os.cpu_count() or 1))


def _dev_cluster(data_dir: str, shards: int | None, host: str, base_port: int) -> list[str]:
    """Write (or reuse) the dev cluster's identity and node configs; returns config paths."""
    os.makedirs(data_dir, exist_ok=True)
    identity_path = os.path.join(data_dir, "cluster.toml")
    if os.path.exists(identity_path):
        identity = config_mod.read_toml(identity_path)
        if shards is not None and shards != identity["shards"]:
            raise ConfigError(f"{data_dir} holds a cluster created with {identity['shards']} "
                              f"shards; the shard count can't change (asked for {shards})")
    else:
        identity = {"shards": shards or dev_shards_default(), "secret": secrets.token_hex(24)}
        with open(identity_path, "w") as f:
            f.write(f'shards = {identity["shards"]}\nsecret = "{identity["secret"]}"\n')
    if identity["shards"] > 99:
        raise ConfigError("coda-flow dev supports at most 99 shards (ports are laid out per node)")
    nodes = [{"id": f"n{i + 1}", "client": f"{host}:{base_port + i}",
              "metrics": f"{host}:{base_port + 10 + i}",
              "raft": f"{host}:{base_port + 100 * (i + 1)}"} for i in range(DEV_NODES)]
    paths = []
    for n in nodes:
        cfg = config_mod.from_mapping({"node_id": n["id"], "data_dir": data_dir,
                                       "shards": identity["shards"],
                                       "secret": identity["secret"], "nodes": nodes})
        path = os.path.join(data_dir, f"{n['id']}.toml")
        with open(path, "w") as f:
            f.write(_to_toml(config_mod.to_mapping(cfg)))
        paths.append(path)
    return paths


def _to_toml(mapping: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {value(v)}" for k, v in mapping.items() if not isinstance(v, (dict, list))]
    lines.append("[raft]")
    lines += [f"{k} = {value(v)}" for k, v in mapping["raft"].items()]
    for n in mapping["nodes"]:
        lines.append("[[nodes]]")
        lines += [f"{k} = {value(v)}" for k, v in n.items()]
    return "\n".join(lines) + "\n"


def _wait_all_leaders(address: str, shards: int, procs: list, timeout_s: float,
                      stopped=lambda: False) -> bool:
    """True once every shard has a leader; False if stopped() turns true first."""
    from coda.client.client import SyncClient
    deadline = time.monotonic() + timeout_s
    with SyncClient(address, timeout_s=2.0) as client:
        while time.monotonic() < deadline:
            if stopped():
                return False
            for p in procs:
                if p.poll() is not None:
                    raise click.ClickException(f"a node exited during start-up (code {p.returncode})")
            try:
                status = client.cluster_status()
                if len(status["shards"]) == shards and all(s["leader"] for s in status["shards"]):
                    return True
            except CodaError:
                pass
            time.sleep(0.2)
    raise click.ClickException(f"not every shard elected a leader within {timeout_s:.0f} s")


@main.command()
@click.option("--data-dir", default="coda-data", show_default=True,
              help="Where the three nodes keep their data; reuse it to keep your workflows.")
@click.option("--shards", type=int, default=None,
              help="Shard count for a new data dir (default: the cores here, at most 4); "
              "fixed afterwards.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--base-port", default=7100, show_default=True,
              help="Node i serves clients on base+i, metrics on base+10+i, Raft from base+100*(i+1).")
@click.option("--log-level", default="info", show_default=True)
def dev(data_dir, shards, host, base_port, log_level) -> None:
    """Run a local three-node cluster in the foreground (Ctrl-C stops it)."""
    try:
        paths = _dev_cluster(os.path.abspath(data_dir), shards, host, base_port)
    except CodaError as exc:
        raise click.UsageError(exc.message) from None
    cfg = config_mod.from_mapping(config_mod.read_toml(paths[0]))
    procs = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for path, n in zip(paths, cfg.nodes):
            log_file = open(os.path.join(cfg.data_dir, f"{n.id}.log"), "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "coda.flow.cli", "serve", "--config", path,
                 "--log-level", log_level], stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True))
        address = ",".join(n.client for n in cfg.nodes)
        ready = _wait_all_leaders(address, cfg.shards, procs, DEV_READY_TIMEOUT_S,
                                  lambda: stopping)
        # Checked again: a signal that came while the last status call was in flight
        # (the elections finishing meanwhile) must not announce a cluster being stopped.
        if not ready or stopping:
            return  # SIGTERM/SIGINT during start-up: stop now, print no address
        click.echo(f"CODA_ADDRESS={address}")
        click.echo("CODA_METRICS=" + ",".join(f"http://{n.metrics}/metrics" for n in cfg.nodes))
        click.echo(f"# data in {cfg.data_dir}, node logs in {cfg.data_dir}/n*.log; Ctrl-C stops",
                   err=True)
        sys.stdout.flush()
        while not stopping:
            for p, n in zip(procs, cfg.nodes):
                if p.poll() is not None:
                    raise click.ClickException(f"node {n.id} exited with code {p.returncode}; "
                                               f"see {cfg.data_dir}/{n.id}.log")
            time.sleep(0.2)
    finally:
        _stop_all(procs)


def _stop_all(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DEV_STOP_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


assert limits.shards_max >= 99

if __name__ == "__main__":
    main()
