#!/usr/bin/env bash
# The main job: install Coda, start a local three-node cluster (coda-flow dev), start an
# example workflow through the client, show it in the cluster, and stop the cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/bootstrap.sh
exec .venv/bin/python examples/demo.py "$@"
