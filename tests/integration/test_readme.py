"""The README's quick start, run as a new user would type it: every line of the block
between `<!-- quickstart -->` and `<!-- /quickstart -->`, in order, in a shell.

Only the ports and the data directory change (a free block instead of 7100.., a tmp dir),
and the install line is checked, not run (this suite runs in the venv it makes). Lines
ending in `&` start in the background and the next line waits until they are ready, as
a person would: `coda-flow dev` until it prints CODA_METRICS, a supervisor until its
/health says healthy. Each line must exit 0 and show what the README says it shows.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from harness import free_port_block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL_LINE = "scripts/bootstrap.sh && . .venv/bin/activate"

pytestmark = pytest.mark.cluster


def quickstart_lines() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert block, "README.md has no quickstart block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def localize(line: str, base: int, health_port: int, data_dir: str) -> str:
    """The README's ports and data dir -> this test's."""
    line = re.sub(r"\b71(\d\d)\b", lambda m: str(base + int(m.group(1))) if m.group(1) != "90"
                  else str(health_port), line)
    if line.startswith("coda-flow dev"):
        line = line.replace("--data-dir coda-data", f"--data-dir {data_dir}")
        line = line.replace(" &", f" --base-port {base} &")
    return line


def wait_ready(line: str, proc: subprocess.Popen, health_port: int) -> None:
    deadline = time.monotonic() + 90
    if line.startswith("coda-flow dev"):
        for out in proc.stdout:
            if out.startswith("CODA_METRICS="):
                return
        raise AssertionError(f"coda-flow dev ended ({proc.wait()}) before it was ready")
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{line!r} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health", timeout=2) as r:
                if json.loads(r.read()).get("healthy"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{line!r} not ready in 90 s")


EXPECT = {  # command prefix -> what its output must hold
    "coda workflow result": lambda out: out.strip() == '{"chars":11,"greeting":"Hello, Ada!"}',
    "coda workflow describe": lambda out: re.search(r"^status\s+COMPLETED$", out, re.M),
    "coda workflow history": lambda out: "TimerFired" in out and "WorkflowExecutionCompleted" in out,
    "coda workflow state": lambda out: out.strip() == "true",
    "coda workflow list": lambda out: re.search(r"^hello-1\s+hello\s+COMPLETED", out, re.M),
    "coda supervisor list": lambda out: "workflows: hello" in out and "make_greeting" in out,
    "coda supervisor health": lambda out: "HEALTHY" in out and "workflow types hello" in out,
    "coda cluster status": lambda out: "NO LEADER" not in out and "shard" in out,
    "coda cluster health": lambda out: out.count("SERVING") >= 3 and "NOT_SERVING" not in out,
    "curl": lambda out: re.search(r"^coda_shard_commit_index\{.*\} [1-9]", out, re.M),
}


def test_the_readme_quickstart_works_as_written(tmp_path):
    lines = quickstart_lines()
    assert lines[0] == INSTALL_LINE, lines[0]
    base = free_port_block(400, random.Random())
    health_port = free_port_block(1, random.Random())
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("CODA_ADDRESS", None)
    background: list[subprocess.Popen] = []
    checked = set()
    try:
        for raw in lines[1:]:
            line = localize(raw, base, health_port, str(tmp_path / "data"))
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                env[name] = value
                continue
            if line.endswith("&"):
                # coda-flow dev prints its two lines on stdout and nothing more; the rest
                # log to files, so nothing fills a pipe nobody reads.
                log = open(tmp_path / f"bg{len(background)}.log", "w")
                out = subprocess.PIPE if line.startswith("coda-flow dev") else log
                proc = subprocess.Popen(["bash", "-c", "exec " + line[:-1]], cwd=ROOT, env=env,
                                        stdout=out, stderr=log, text=True,
                                        start_new_session=True)
                background.append(proc)
                wait_ready(line, proc, health_port)
                continue
            done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=90, stdin=subprocess.DEVNULL)
            assert done.returncode == 0, (raw, done.stdout, done.stderr)
            for prefix, check in EXPECT.items():
                if line.startswith(prefix):
                    assert check(done.stdout), (raw, done.stdout)
                    checked.add(prefix)
        assert checked == set(EXPECT), f"the README lost a step: {set(EXPECT) - checked}"
    finally:
        for proc in reversed(background):  # the supervisor first, then the cluster
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
