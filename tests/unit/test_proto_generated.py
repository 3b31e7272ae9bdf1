"""The generated gRPC modules committed in proto/ are exactly what scripts/gen_proto.sh
makes from the .proto files: a .proto edited without regenerating fails here.

grpcio-tools is in the test extras (pinned to the version that generated the committed
files); the test is skipped only when it is not installed at all.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
SCRIPT = ROOT / "scripts" / "gen_proto.sh"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)}


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpcio-tools is not installed (pip install -e '.[test]')")
def test_committed_proto_modules_match_the_generator(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable), timeout=120)
    assert run.returncode == 0, f"gen_proto.sh failed:\n{run.stdout}\n{run.stderr}"

    protos = sorted(p.stem for p in PROTO_DIR.glob("*.proto"))
    assert protos, "no .proto files in proto/"
    expected_names = {stem + suffix for stem in protos for suffix in GENERATED_SUFFIXES}
    fresh, committed = _generated(out), _generated(PROTO_DIR)
    assert set(fresh) == expected_names, sorted(fresh)
    assert set(committed) == expected_names, (
        f"proto/ should hold exactly the generated modules {sorted(expected_names)}; "
        f"it holds {sorted(committed)}")
    stale = [name for name in sorted(expected_names) if fresh[name] != committed[name]]
    assert not stale, (f"proto/{', proto/'.join(stale)} differ from what scripts/gen_proto.sh "
                       "generates; run scripts/gen_proto.sh and commit the result")
    # The generated modules import each other as coda.api.*, the package they ship in.
    assert b"from coda.api import" in fresh["flow_pb2_grpc.py"]
