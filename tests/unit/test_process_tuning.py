"""coda.process: the interpreter settings of Coda's long-running processes."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from coda import process


def test_thresholds_default_and_override(monkeypatch):
    monkeypatch.delenv("CODA_GC_THRESHOLD", raising=False)
    assert process.gc_thresholds() == process.GC_THRESHOLDS
    monkeypatch.setenv("CODA_GC_THRESHOLD", "700,10,10")
    assert process.gc_thresholds() == (700, 10, 10)
    for bad in ("700,10", "a,b,c", "0,10,10"):
        monkeypatch.setenv("CODA_GC_THRESHOLD", bad)
        with pytest.raises(ValueError, match="CODA_GC_THRESHOLD"):
            process.gc_thresholds()


def test_tuning_a_fresh_interpreter():
    # In a child: freezing and re-thresholding this pytest process would outlive the test.
    code = ("import gc; from coda import process; process.tune_process(); "
            "print(gc.get_threshold(), gc.get_freeze_count() > 0, process.tune_malloc())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert " ".join(out[:3]) == str(process.GC_THRESHOLDS)
    assert out[3] == "True"  # start-up objects frozen
    # glibc (this machine's and CI's libc) takes the malloc thresholds.
    assert out[4] == "True"
