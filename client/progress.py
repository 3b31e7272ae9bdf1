"""Progress of a long operation on one rewritten stderr line: `listed 3,000 workflows
(3 pages, 2,400/s)`, or with a known total `W-seq: 300/500 workflows (60%, 410/s, eta 0.5 s)`.

Used by `coda workflow list --all` and the benchmarks. Redrawn at most every
`min_interval_s` so a fast loop costs nothing; silent when not enabled (e.g. stderr is
not a terminal and nobody asked), so scripts and logs stay clean.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, verb: str, noun: str, *, total: int | None = None,
                 enabled: bool | None = None, stream=None, min_interval_s: float = 0.25):
        self.verb, self.noun, self.total = verb, noun, total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_interval_s = min_interval_s
        self.started_s = time.monotonic()
        self.count = 0
        self.steps = 0
        self._drawn_s = 0.0
        self._drawn = False
        self._step: str | None = None

    def add(self, count: int = 1, *, step: str | None = None) -> None:
        """`count` more items done; `step` (e.g. "pages") counts the calls too."""
        self.count += count
        self.steps += 1
        self._step = step or self._step
        now = time.monotonic()
        if self.enabled and (now - self._drawn_s >= self.min_interval_s
                             or (self.total is not None and self.count >= self.total)):
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed_s = max((now or time.monotonic()) - self.started_s, 1e-6)
        rate = self.count / elapsed_s
        parts = []
        if self.total:
            parts.append(f"{100 * self.count / self.total:.0f}%")
        if self._step:
            parts.append(f"{self.steps} {self._step}")
        parts.append(f"{rate:,.0f}/s")
        left = (self.total or 0) - self.count
        if left > 0 and rate > 0:
            parts.append(f"eta {left / rate:.1f} s")
        done = f"{self.count:,}/{self.total:,}" if self.total else f"{self.count:,}"
        return f"{self.verb} {done} {self.noun} ({', '.join(parts)})"

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()
        self._drawn_s, self._drawn = now, True

    def done(self) -> None:
        """Draw the final count and end the line."""
        if self.enabled and self.count:
            self._draw(time.monotonic())
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
