#!/usr/bin/env bash
# Regenerate proto/*_pb2*.py from proto/*.proto (needs grpcio-tools, in the test extras).
# The generated modules are committed so a plain `pip install` needs no protoc; the test
# tests/unit/test_proto_generated.py fails when they drift from the .proto files.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/proto}
python=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Place the files under coda/api/ so generated imports read `from coda.api import ...`.
mkdir -p "$tmp/coda/api"
cp "$here"/proto/*.proto "$tmp/coda/api/"
(cd "$tmp" && "$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
    --grpc_python_out=. coda/api/*.proto)
cp "$tmp"/coda/api/*_pb2*.py* "$out/"
