#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Extra arguments go to pytest.
#   scripts/test.sh                 # the whole suite (what CI runs)
#   scripts/test.sh tests/unit -x   # a part of it
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# System tools for the fault-injection tests: network namespaces and packet filters
# (partitions), FUSE (power loss); and Prometheus with promtool for the real scrape test
# (tests/integration/test_prometheus_scrape.py); libfaketime for the jepsen clock faults.
# Only as root (CI is root); without them
# those tests say why and are reported as skipped (the scrape test fails under CI=true).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v ip >/dev/null || need+=(iproute2)
    command -v iptables >/dev/null || need+=(iptables)
    command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || need+=(fuse3)
    ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || need+=(libfuse2)
    # libfaketime: the jepsen clock nemesis; curl: the README's quick start (test_readme).
    [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need+=(libfaketime)
    command -v curl >/dev/null || need+=(curl)
    need_prometheus=()
    { command -v prometheus && command -v promtool; } >/dev/null || need_prometheus+=(prometheus)
    if [ ${#need[@]} -gt 0 ] || [ ${#need_prometheus[@]} -gt 0 ]; then
        echo "installing ${need[*]} ${need_prometheus[*]} ..."
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    fi
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ ${#need_prometheus[@]} -gt 0 ]; then
        # The test runs its own server on a free port: the package must not start the
        # system one (port 9090) nor its recommended node exporter. policy-rc.d exit 101
        # is Debian's "don't start services" answer; one already there is left as it is.
        policy=/usr/sbin/policy-rc.d
        made_policy=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
            made_policy=1
            trap 'rm -f "$policy"' EXIT  # also if the install fails (set -e)
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need_prometheus[@]}" >/dev/null
        if [ -n "$made_policy" ]; then rm -f "$policy"; trap - EXIT; fi
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
