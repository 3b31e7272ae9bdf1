"""Helpers shared by the execution tests: test workflow modules written to disk, the
records their tasks append (counted outside the engine), and polling."""

from __future__ import annotations

import json
import os
import textwrap
import time


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
