"""The LazyFS daemon lives as long as the process that mounted it, not the thread.

Found by the jepsen suite: the daemon used PR_SET_PDEATHSIG, which fires when the parent
*thread* exits, so a mount made from a short-lived thread (the nemesis remounts after a
power cut) died with the thread and the node on it failed with "Transport endpoint is
not connected". Both directions are checked here: a thread's mount outlives the thread,
and a mount still goes when its process dies (no daemon left behind)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from lazyfs import LazyFS, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"LazyFS unavailable: {REASON}")
HERE = os.path.dirname(os.path.abspath(__file__))


def test_a_mount_made_by_a_thread_outlives_the_thread(tmp_path):
    fs = LazyFS(tmp_path / "disk", tmp_path / "mnt", tmp_path / "state")
    thread = threading.Thread(target=fs.mount)
    thread.start()
    thread.join()
    try:
        time.sleep(1.5)  # the daemon's parent watch polls every 0.5 s
        assert fs.proc.poll() is None, fs.read_log()[-2000:]
        with open(tmp_path / "mnt" / "f", "wb") as f:
            f.write(b"still here")
            f.flush()
            os.fsync(f.fileno())
        assert (tmp_path / "mnt" / "f").read_bytes() == b"still here"
    finally:
        fs.cleanup()


def test_the_daemon_goes_when_the_mounting_process_dies(tmp_path):
    code = (f"import sys, os; sys.path.insert(0, {HERE!r})\n"
            "from lazyfs import LazyFS\n"
            f"fs = LazyFS({str(tmp_path / 'disk')!r}, {str(tmp_path / 'mnt')!r}, "
            f"{str(tmp_path / 'state')!r}); fs.mount(); print(fs.proc.pid, flush=True)\n"
            "os._exit(0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    daemon = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.ismount(tmp_path / "mnt"):
        time.sleep(0.1)
    assert not os.path.ismount(tmp_path / "mnt")
    while time.monotonic() < deadline and _running(daemon):
        time.sleep(0.1)
    assert not _running(daemon), f"daemon {daemon} outlived the process that mounted it"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, maybe not at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
