"""Run on the control host by the runner (`python -m jepsen.status ADDRESS` prints the
cluster status as JSON; `--supervisor PORT` prints a supervisor's /health), because from
the root namespace the hosts' addresses are not reachable."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if argv[0] == "--supervisor":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{argv[1]}/health", timeout=3) as r:
                print(r.read().decode())
        except urllib.error.HTTPError as exc:  # 503 while not every shard is connected
            print(exc.read().decode())
        return 0
    from coda.client.client import SyncClient
    with SyncClient(argv[0], timeout_s=5.0) as client:
        print(json.dumps(client.cluster_status()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
