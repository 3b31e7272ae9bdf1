"""coda.client.progress: silent unless enabled, rate-limited redraws, a final line."""

import io

from coda.client.progress import Progress


def test_disabled_writes_nothing():
    out = io.StringIO()
    p = Progress("listed", "workflows", enabled=False, stream=out)
    p.add(10)
    p.done()
    assert out.getvalue() == ""


def test_redraws_are_rate_limited_and_the_last_line_is_final():
    out = io.StringIO()
    p = Progress("W-seq:", "workflows", total=300, enabled=True, stream=out, min_interval_s=60)
    for _ in range(299):
        p.add(1)
    assert out.getvalue().count("\r") == 1  # the first add draws; the rest fall in 60 s
    p.add(1)  # reaching the total draws at once
    p.done()
    lines = out.getvalue().split("\r")
    assert lines[-1].startswith("W-seq: 300/300 workflows (100%") and lines[-1].endswith("\n")
    assert "eta" not in lines[-1]


def test_steps_and_eta():
    p = Progress("listed", "workflows", total=1000, enabled=True, stream=io.StringIO())
    p.add(250, step="pages")
    p.add(250, step="pages")
    text = p.line()
    assert text.startswith("listed 500/1,000 workflows (50%, 2 pages, ") and "eta " in text
