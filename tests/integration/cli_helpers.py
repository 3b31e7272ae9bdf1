"""What the CLI tests share: `coda ...` as a subprocess, and checks of its outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

CLI_TIMEOUT_S = 90.0


def _env(address: str | None, allow_undeclared: bool = True) -> dict:
    env = dict(os.environ)
    env.pop("CODA_ADDRESS", None)
    # No supervisor runs here: workflows are started to be stored and shown, not run.
    env["CODA_ALLOW_UNDECLARED_TYPES"] = "1" if allow_undeclared else ""
    if address is not None:
        env["CODA_ADDRESS"] = address
    return env


def coda(*args: str, address: str | None = None,
         allow_undeclared: bool = True) -> subprocess.CompletedProcess:
    """Run `coda ARGS` with CODA_ADDRESS=address (unset if None)."""
    return subprocess.run([sys.executable, "-m", "coda.client.cli", *args],
                          env=_env(address, allow_undeclared),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def failed(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The command exited with `code`, nothing on stdout, and stderr names every word."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


def as_json(result: subprocess.CompletedProcess):
    return json.loads(ok(result))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def module_cluster(tmp_path_factory, name: str, shards: int):
    """A module-scoped fixture's body: one real three-node cluster for the module."""
    from harness import Cluster
    cluster = Cluster(str(tmp_path_factory.mktemp(name)), shards=shards)
    try:
        cluster.start()
        cluster.wait_leaders(timeout_s=60)
        yield cluster
    finally:
        cluster.close()


def nodes_survive(request):
    """After each test that used the cluster: every node still runs (an autouse fixture's
    body; each test module wraps it)."""
    yield
    if "cluster" in request.fixturenames:
        request.getfixturevalue("cluster").assert_alive()
