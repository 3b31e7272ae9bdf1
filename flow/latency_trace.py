"""Wall-clock stamps of a workflow's way through a node, for bench/trace_wlat.py.

Off unless CODA_TRACE_DIR is set in the node's environment when it starts; then each
stamp is a line `<kind> <workflow_id> <seconds> ...` appended to
CODA_TRACE_DIR/<pid>.trace (a file write per stamp: for a bench, never production).
Kinds: `rpc` (StartWorkflow's handler entered, left), `start` (the start proposed, its
answer, the closed run read), `close` (the batch holding the run's close handed to the
event loop, and settled there).
"""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("CODA_TRACE_DIR")
enabled = bool(_DIR)
now_s = time.time


def stamp(kind: str, workflow_id: str, *times_s: float) -> None:
    with open(os.path.join(_DIR, f"{os.getpid()}.trace"), "a") as out:
        out.write(f"{kind} {workflow_id} " + " ".join(f"{t:.6f}" for t in times_s) + "\n")
