"""Helpers shared by the execution tests: test workflow modules written to disk, the
records their tasks append (counted outside the engine), and polling."""

from __future__ import annotations

import json
import os
import textwrap
import time


# Test workflow modules start with RECORDER: their tasks call record(event, ...) to append
# one JSON line per execution event to the file named by LOG_ENV, outside the engine.
LOG_ENV = "CODA_TEST_EXEC_LOG"
RECORDER = '''
import json, os, time
from coda.client.task_context import current_task


def record(event, **extra):
    """One line per execution event, one O_APPEND write (lines of processes never mix)."""
    info = current_task()
    line = json.dumps({"event": event, "wid": info.workflow_id, "key": info.key,
                       "attempt": info.attempt, "pid": os.getpid(), "t": time.time(), **extra})
    fd = os.open(os.environ["CODA_TEST_EXEC_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)
    return info
'''


def write_module(directory, name: str, source: str) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.py"), "w") as f:
        f.write(textwrap.dedent(source))
    return str(directory)


def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(poll_s)
