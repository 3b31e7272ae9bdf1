#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
#   scripts/test.sh                 # the whole suite (what CI runs)
#   scripts/test.sh tests/unit -x   # a part of it
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# System tools for the fault-injection tests: network namespaces and packet filters
# (partitions), FUSE (power loss). Only as root (CI is root); without them those tests
# say why and are reported as skipped.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v iptables >/dev/null || need+=(iptables)
    command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || need+=(fuse3)
    ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need+=(libfuse2)
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]} ..."
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
scripts/bootstrap.sh test
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"
