"""The README's main job (scripts/demo.sh runs examples/demo.py) works end to end."""

import os
import random
import subprocess
import sys

from harness import free_port_block

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_the_examples_on_a_local_cluster(tmp_path):
    # coda-flow dev uses base, base+1, base+2 (client), +10.. (metrics), +100*(i+1).. (raft)
    base = free_port_block(400, random.Random())
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--data-dir",
         str(tmp_path / "data"), "--base-port", str(base)],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for workflow_id in ("weekly-demo-0", "weekly-demo-1", "weekly-demo-2", "ev-demo"):
        assert f"{workflow_id}: COMPLETED" in out, out
        assert f"after a full restart: {workflow_id} is still COMPLETED" in out, out
    assert "'receipt': 'stored e-1'" in out
    assert out.rstrip().endswith("done")
