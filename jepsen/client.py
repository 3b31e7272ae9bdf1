"""The jepsen client process: runs the workloads against the cluster and records every
operation Jepsen-style (invoke, then ok / fail / info), one JSON line each.

Started by the runner (inside the control namespace when the hosts are namespaces) as
`python -m jepsen.client CONFIG.json`. It runs the workloads for `duration_s`, then
waits for a line "final" on stdin (the runner sends it once the nemesis has healed and
the cluster has leaders again), does the workloads' final reads, prints "done" and exits.

Outcomes: an answer is ok; an error that says the operation surely did not happen
(`definite` and not retryable: AlreadyExists, Aborted, NotFound, InvalidArgument) is
fail; anything else (timeouts, Unavailable after retries, Indeterminate, a lost
connection) is info: it may have happened, or may still.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

DEFINITE_CODES = ("ALREADY_EXISTS", "ABORTED", "NOT_FOUND", "INVALID_ARGUMENT")


class Recorder:
    """Appends ops to a JSONL file; times are monotonic ns since the run's t0."""

    def __init__(self, path: str, t0_ns: int):
        self._file = open(path, "a", buffering=1)
        self.t0_ns = t0_ns

    def write(self, process, kind: str, workload: str, f: str, key=None, value=None) -> None:
        op = {"time_ns": time.monotonic_ns() - self.t0_ns, "process": process, "type": kind,
              "f": f, "workload": workload, "key": key, "value": value}
        self._file.write(json.dumps(op, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        self._file.close()


def outcome_of(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code in DEFINITE_CODES and getattr(exc, "definite", False):
        return "fail"
    return "info"


async def call(rec: Recorder, process, workload: str, f: str, key, value, coro_fn,
               answer=lambda result: result):
    """One recorded operation: invoke, await coro_fn(), then ok/fail/info."""
    rec.write(process, "invoke", workload, f, key, value)
    try:
        result = await coro_fn()
    except asyncio.CancelledError:
        rec.write(process, "info", workload, f, key, {"error": "cancelled at the end"})
        raise
    except Exception as exc:  # every failure is recorded; the kind decides fail vs info
        kind = outcome_of(exc)
        rec.write(process, kind, workload, f, key,
                  {"error": f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"[:300]})
        return kind, exc
    rec.write(process, "ok", workload, f, key, answer(result))
    return "ok", result


async def main_async(cfg: dict) -> None:
    import coda
    from jepsen import workloads
    rec = Recorder(cfg["history_path"], cfg["t0_ns"])
    rng = random.Random(cfg["seed"])
    async with coda.Client(cfg["address"], timeout_s=cfg.get("op_timeout_s", 10.0),
                           allow_undeclared_types=True) as client:
        chosen = [workloads.make(name, cfg, rng.randrange(2**32), base_process=100 * i)
                  for i, name in enumerate(cfg["workloads"])]
        deadline = time.monotonic() + cfg["duration_s"]
        await asyncio.gather(*(w.run(client, rec, deadline) for w in chosen))
        print("ran", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != "final":
            raise SystemExit(f"expected 'final' on stdin, got {line!r}")
        final_deadline = time.monotonic() + cfg.get("final_s", 90.0)
        await asyncio.gather(*(w.final(client, rec, final_deadline) for w in chosen))
    rec.close()
    print("done", flush=True)


def main() -> None:
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    sys.path.insert(0, cfg["root"])
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(cfg))
    os._exit(0)  # grpc threads must not hold the exit up


if __name__ == "__main__":
    main()
