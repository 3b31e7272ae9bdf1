"""Sampling profiles of running Coda processes (py-spy), and where their time goes.

`Profiler(pids_by_role, out_dir)` runs one `py-spy record --nonblocking --format raw` per
process while a phase runs (a context manager), so a bench can say which functions burn
the CPU it measured. py-spy samples only threads that are running (not idle in a poll or
a lock), so a process's samples approximate the CPU it used.

`summarize(path)` reads a collapsed-stack file (`frame;frame;... count`) and returns the
functions with the most samples on top of the stack (self) and anywhere in it (inclusive),
with file:line, so the profile note can name them.

    python bench/profiling.py bench/results/profile-<time>/nodes-1234.txt   # print a summary
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None or os.path.exists(_venv_py_spy())


def _venv_py_spy() -> str:
    return os.path.join(os.path.dirname(sys.executable), "py-spy")


class Profiler:
    """py-spy on every pid of `pids_by_role` ({role: [pid, ...]}) while the block runs."""

    def __init__(self, pids_by_role: dict[str, list[int]], out_dir: str, rate_hz: int = 200):
        self.pids_by_role = pids_by_role
        self.out_dir = out_dir
        self.rate_hz = rate_hz
        self.procs: list[tuple[str, int, str, subprocess.Popen]] = []

    def __enter__(self) -> "Profiler":
        os.makedirs(self.out_dir, exist_ok=True)
        exe = shutil.which("py-spy") or _venv_py_spy()
        for role, pids in self.pids_by_role.items():
            for pid in pids:
                path = os.path.join(self.out_dir, f"{role}-{pid}.txt")
                # CODA_PROFILE_NATIVE=1: native frames too (Cython, C), to see into grpc
                # and uvloop; py-spy then pauses the process per sample (slower).
                how = (["--native"] if os.environ.get("CODA_PROFILE_NATIVE") == "1"
                       else ["--nonblocking"])
                proc = subprocess.Popen(
                    [exe, "record", *how, "--gil", "--format", "raw", "--rate",
                     str(self.rate_hz), "--pid", str(pid), "--output", path],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                self.procs.append((role, pid, path, proc))
        return self

    def __exit__(self, *exc) -> None:
        for _, _, _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for role, pid, _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGINT):
                err = proc.stderr.read().decode(errors="replace")[-500:]
                print(f"warning: py-spy on {role} {pid} exited {proc.returncode}: {err}",
                      file=sys.stderr)
            proc.stderr.close()

    def files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for role, _, path, _ in self.procs:
            if os.path.exists(path):
                out.setdefault(role, []).append(path)
        return out


def read_stacks(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _short(frame: str) -> str:
    """'func (path/to/coda/flow/x.py:12)' -> 'func (flow/x.py:12)'."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = m.group("line")
    return f"{m.group('func')} ({path}{':' + line if line else ''})"


def _function(frame: str) -> str:
    """A frame without its line number: samples of one function add up."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    return _short(f"{m.group('func')} ({m.group('file')})")


def summarize(paths: list[str], top: int = 25) -> dict:
    """Samples, the top self and inclusive functions (share of samples), over `paths`."""
    self_counts: collections.Counter = collections.Counter()
    incl_counts: collections.Counter = collections.Counter()
    total = 0
    for path in paths:
        for frames, count in read_stacks(path):
            # py-spy puts the thread first ('process 12:"python" thread ...' frames carry
            # no file), then outermost -> innermost.
            funcs = [_function(f) for f in frames if _FRAME.match(f)]
            if not funcs:
                continue
            total += count
            self_counts[funcs[-1]] += count
            for func in set(funcs):
                incl_counts[func] += count
    share = lambda c: round(100.0 * c / total, 1) if total else 0.0  # noqa: E731
    return {"samples": total,
            "self": [[f, share(c)] for f, c in self_counts.most_common(top)],
            "inclusive": [[f, share(c)] for f, c in incl_counts.most_common(top)]}


def print_summary(role: str, summary: dict, top: int = 15) -> None:
    print(f"{role}: {summary['samples']} samples")
    print("  self %   function")
    for func, pct in summary["self"][:top]:
        print(f"  {pct:6.1f}   {func}")
    print("  incl %   function")
    for func, pct in summary["inclusive"][:top]:
        print(f"  {pct:6.1f}   {func}")


if __name__ == "__main__":
    print_summary(", ".join(sys.argv[1:]), summarize(sys.argv[1:]), top=30)
