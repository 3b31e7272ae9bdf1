import os
import sys

import pytest

# Fault helpers (netns.py, client_probe.py) import as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

import netns  # noqa: E402


@pytest.fixture
def net():
    """Three node namespaces and one client namespace on a private bridge.

    Skips only when this machine can't make namespaces (not root, no `ip netns`), and says
    why; any other setup failure (e.g. iptables missing) fails the test.
    """
    reason = netns.unavailable_reason()
    if reason is not None:
        print(f"skipping network-namespace test: {reason}", file=sys.stderr)
        pytest.skip(f"network namespaces unavailable: {reason}")
    with netns.Net(nodes=3, clients=1) as n:
        print(f"netns run {n.prefix}* subnet {n.subnet}.0/24 (setup {n.setup_s:.2f} s)")
        yield n
