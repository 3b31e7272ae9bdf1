#!/usr/bin/env python3
"""LazyFS for tests: a FUSE passthrough filesystem that forgets what was never fsynced.

The idea of Jepsen's LazyFS, small: file *contents* written through the mount stay in
this process's memory until the file is fsynced (fsync, fdatasync, msync(MS_SYNC), a write
on an O_SYNC/O_DSYNC descriptor); only then do they reach the backing directory. So at
every moment the backing directory holds exactly what a disk would hold after a power cut,
and "power cut" = drop the in-memory part (`drop`), unmount, mount again (which also
throws away the kernel's page cache for the mount).

What is lazy and what is not:
- Lazy (lost unless fsynced): data written with write()/pwrite() or through a shared
  writable mmap (the kernel writes dirty pages back to us as FUSE writes; msync(MS_SYNC)
  arrives as those writes followed by FUSE fsync), and size changes (truncate/ftruncate,
  growth by writes). The unit of tracking is a 4 KiB block, per inode, so a rename keeps
  a file's unsynced data with the file.
- Not lazy: the namespace. create/mkdir/rename/unlink/link/symlink/rmdir take effect on
  the backing directory at once, as if every directory operation were durable (fsyncdir
  is accepted and does nothing). A crash can therefore leave a *renamed* file whose
  contents were never synced: zero-length or partial, the classic rename-without-fsync
  hazard. It never loses a file creation or a rename, so it does not test missing
  directory fsyncs.
- The backing directory is never fsynced to the host disk (the host does not crash in
  these tests); `--backing-fsync` turns that on.

Usage as a daemon (the tests use the `LazyFS` helper below):
    python lazyfs.py BACKING_DIR MOUNTPOINT --control /path/ctl.sock
Control: a Unix socket that answers one-line commands with one JSON line:
    ping  -> {"ok": true}
    stats -> {"ok": true, "pending_files": N, "pending_bytes": B, ...}
    drop  -> drops every unsynced byte now ("power cut"); returns what was dropped
SIGUSR1 also drops (result in the daemon's log). SIGTERM/SIGINT unmount and exit; exiting
for any reason (even SIGKILL) loses the unsynced data, like a power cut.

Needs root (or a user allowed to mount FUSE), /dev/fuse, libfuse2 (Debian: libfuse2,
plus fuse3 for the fusermount command) and fusepy (PyPI: fusepy==3.0.1).
"""

from __future__ import annotations

import argparse
import atexit
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

BLOCK = 4096
log = logging.getLogger("lazyfs")


# ======================================================================================
# The filesystem (daemon side)
# ======================================================================================

class _Pending:
    """Unsynced state of one inode: logical size and the 4 KiB blocks written since the
    last sync. Bytes below `floor` and not in `blocks` are as on the backing file; bytes
    at or above `floor` and not in `blocks` read as zeros (a truncate cut them)."""

    __slots__ = ("fd", "size", "floor", "blocks")

    def __init__(self, fd: int, size: int):
        self.fd = fd          # our own O_RDWR descriptor of the backing inode
        self.size = size
        self.floor = size
        self.blocks: dict[int, bytearray] = {}

    def block(self, b: int) -> bytearray:
        """Block `b` of the overlay, filled from the backing file on first use."""
        blk = self.blocks.get(b)
        if blk is None:
            blk = bytearray(BLOCK)
            start = b * BLOCK
            if start < self.floor:
                data = os.pread(self.fd, min(BLOCK, self.floor - start), start)
                blk[:len(data)] = data
            self.blocks[b] = blk
        return blk

    def write(self, data: bytes, offset: int) -> None:
        pos, end = offset, offset + len(data)
        view = memoryview(data)
        while pos < end:
            b, inner = divmod(pos, BLOCK)
            n = min(BLOCK - inner, end - pos)
            self.block(b)[inner:inner + n] = view[pos - offset:pos - offset + n]
            pos += n
        self.size = max(self.size, end)

    def truncate(self, length: int) -> None:
        if length < self.size:
            for b in list(self.blocks):
                start = b * BLOCK
                if start >= length:
                    del self.blocks[b]
                elif length - start < BLOCK:
                    blk = self.blocks[b]
                    blk[length - start:] = bytes(BLOCK - (length - start))
            self.floor = min(self.floor, length)
        self.size = length

    def read(self, size: int, offset: int) -> bytes:
        """The file as a reader sees it: backing bytes below `floor`, overlay blocks on top."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        if offset < self.floor:
            data = os.pread(self.fd, min(end, self.floor) - offset, offset)
            out[:len(data)] = data
        for b in range(offset // BLOCK, (end - 1) // BLOCK + 1):
            blk = self.blocks.get(b)
            if blk is None:
                continue
            start = b * BLOCK
            lo, hi = max(start, offset), min(start + BLOCK, end)
            out[lo - offset:hi - offset] = blk[lo - start:hi - start]
        return bytes(out)


_STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_blocks", "st_blksize", "st_rdev")
_STATVFS_FIELDS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                   "f_files", "f_flag", "f_frsize", "f_namemax")


class _LazyState:
    """The daemon's bookkeeping: unsynced state per inode, open handles, counters.
    Everything here runs under `_mu` (taken by the callers that are FUSE ops)."""

    def __init__(self, root: str, backing_fsync: bool = False):
        self.root = os.path.realpath(root)
        self.backing_fsync = backing_fsync
        self._mu = threading.RLock()
        self.pending: dict[tuple[int, int], _Pending] = {}
        self.handles: dict[tuple[int, int], int] = {}   # open FUSE handles per inode
        self.fh_key: dict[int, tuple[int, int]] = {}
        self.sync_fhs: set[int] = set()                  # opened with O_SYNC / O_DSYNC
        self.counters = {"writes": 0, "write_bytes": 0, "fsyncs": 0, "synced_bytes": 0,
                         "drops": 0, "dropped_bytes": 0, "dropped_files": 0}

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    @staticmethod
    def _fh(fi):
        return fi.fh if fi else None

    def _key_of_fh(self, fh: int) -> tuple[int, int]:
        key = self.fh_key.get(fh)
        if key is None:
            st = os.fstat(fh)
            key = (st.st_dev, st.st_ino)
        return key

    def _pending_for(self, key, opener) -> _Pending:
        p = self.pending.get(key)
        if p is None:
            fd = opener()
            p = _Pending(fd, os.fstat(fd).st_size)
            self.pending[key] = p
        return p

    def _reopen_fh(self, fh: int):
        return lambda: os.open(f"/proc/self/fd/{fh}", os.O_RDWR | os.O_CLOEXEC)

    def _pending_for_fh(self, fh: int) -> _Pending:
        return self._pending_for(self._key_of_fh(fh), self._reopen_fh(fh))

    def _pending_for_path(self, path: str) -> _Pending:
        full = self._full(path)
        st = os.stat(full)
        return self._pending_for((st.st_dev, st.st_ino),
                                 lambda: os.open(full, os.O_RDWR | os.O_CLOEXEC))

    def _apply(self, key) -> None:
        """fsync: make the inode's unsynced state the backing file's state."""
        p = self.pending.pop(key, None)
        if p is None:
            return
        try:
            if p.floor < os.fstat(p.fd).st_size:
                os.ftruncate(p.fd, p.floor)
            os.ftruncate(p.fd, p.size)
            for b, blk in p.blocks.items():
                start = b * BLOCK
                if start < p.size:
                    chunk = blk[:min(BLOCK, p.size - start)]
                    os.pwrite(p.fd, chunk, start)
                    self.counters["synced_bytes"] += len(chunk)
            if self.backing_fsync:
                os.fsync(p.fd)
        finally:
            os.close(p.fd)

    def _persist_range(self, p: _Pending, data: bytes, offset: int) -> None:
        """A write on an O_SYNC/O_DSYNC handle: that range is durable at once."""
        os.pwrite(p.fd, data, offset)
        if self.backing_fsync:
            os.fdatasync(p.fd)

    def _forget_if_unused(self, key) -> None:
        if self.handles.get(key, 0) == 0:
            p = self.pending.pop(key, None)
            if p is not None:
                os.close(p.fd)

    def _register(self, fi, fd: int, flags: int) -> None:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._mu:
            self.fh_key[fd] = key
            self.handles[key] = self.handles.get(key, 0) + 1
            if flags & (os.O_SYNC | os.O_DSYNC):
                self.sync_fhs.add(fd)
        fi.fh = fd
        fi.direct_io = 0      # page cache on: shared writable mmap must work
        fi.keep_cache = 0     # a fresh open re-reads from us

    def _unregister(self, fh: int) -> None:
        """The last release of an inode's handle forgets its unsynced state if it is
        unlinked (nothing can ever read or sync it again)."""
        key = self.fh_key.pop(fh, None)
        self.sync_fhs.discard(fh)
        if key is None:
            return
        left = self.handles.get(key, 1) - 1
        if left:
            self.handles[key] = left
            return
        self.handles.pop(key, None)
        p = self.pending.get(key)
        if p is not None and os.fstat(p.fd).st_nlink == 0:
            self._forget_if_unused(key)

    def _describe_dropped(self, key, p: _Pending) -> dict:
        try:
            name = os.readlink(f"/proc/self/fd/{p.fd}")
            name = os.path.relpath(name, self.root) if name.startswith(self.root) else name
        except OSError:
            name = f"inode {key[1]}"
        return {"file": name, "blocks": len(p.blocks), "size": p.size,
                "synced_size": os.fstat(p.fd).st_size}

    def drop_unsynced(self) -> dict:
        with self._mu:
            files = []
            total = 0
            for key, p in self.pending.items():
                total += len(p.blocks) * BLOCK
                files.append(self._describe_dropped(key, p))
                os.close(p.fd)
            self.pending.clear()
            self.counters["drops"] += 1
            self.counters["dropped_bytes"] += total
            self.counters["dropped_files"] += len(files)
            return {"ok": True, "dropped_files": len(files), "dropped_bytes": total,
                    "files": sorted(files, key=lambda f: f["file"])}

    def stats(self) -> dict:
        with self._mu:
            return {"ok": True, "pending_files": len(self.pending),
                    "pending_bytes": sum(len(p.blocks) * BLOCK for p in self.pending.values()),
                    "open_handles": sum(self.handles.values()), **self.counters}


class _LazyFuseMethods(_LazyState):
    """One method per FUSE operation. `_make_operations` mixes this into a subclass of
    fuse.Operations (fusepy is imported late so the helper side works without it)."""

    use_ns = True

    # --- attributes and namespace (pass-through) ----------------------------------
    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            from fuse import FuseOSError
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        fd = self._fh(fh)
        st = os.fstat(fd) if fd is not None else os.lstat(self._full(path))
        attrs = {k: getattr(st, k) for k in _STAT_FIELDS}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns,
                     st_ctime=st.st_ctime_ns)
        with self._mu:
            p = self.pending.get((st.st_dev, st.st_ino))
            if p is not None:
                attrs["st_size"] = p.size
                attrs["st_blocks"] = (p.size + 511) // 512
        return attrs

    def readlink(self, path):
        return os.readlink(self._full(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._full(path), mode, dev)

    def mkdir(self, path, mode):
        os.mkdir(self._full(path), mode)

    def rmdir(self, path):
        os.rmdir(self._full(path))

    def symlink(self, target, source):
        os.symlink(source, self._full(target))

    def link(self, target, source):
        os.link(self._full(source), self._full(target))

    def chmod(self, path, mode):
        os.chmod(self._full(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._full(path), ns=times) if times else os.utime(self._full(path))

    def statfs(self, path):
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in _STATVFS_FIELDS}

    def unlink(self, path):
        full = self._full(path)
        st = os.lstat(full)
        os.unlink(full)
        if st.st_nlink <= 1:
            with self._mu:
                self._forget_if_unused((st.st_dev, st.st_ino))

    def rename(self, old, new):
        src, dst = self._full(old), self._full(new)
        try:
            replaced = os.lstat(dst)
        except FileNotFoundError:
            replaced = None
        os.rename(src, dst)
        if replaced is not None and replaced.st_nlink <= 1:
            src_st = os.lstat(dst)
            if (replaced.st_dev, replaced.st_ino) != (src_st.st_dev, src_st.st_ino):
                with self._mu:
                    self._forget_if_unused((replaced.st_dev, replaced.st_ino))

    # --- directories ---------------------------------------------------------------
    def opendir(self, path):
        return os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._full(path) if path is not None else fh)

    def releasedir(self, path, fh):
        os.close(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        # The namespace is never lazy (module docstring): nothing to make durable.
        if self.backing_fsync:
            os.fsync(fh)
        return 0

    # --- files ---------------------------------------------------------------------
    def _open_backing(self, full: str, flags: int, mode: int = 0o644) -> int:
        # Always read-write where possible: the kernel may read pages through any handle
        # of a writable mapping. O_TRUNC/O_APPEND are handled here, not by the backing fd.
        base = flags & (os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
        try:
            return os.open(full, base | os.O_RDWR | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EROFS, errno.EISDIR, errno.EPERM):
                raise
            return os.open(full, base | (flags & os.O_ACCMODE) | os.O_CLOEXEC, mode)

    def open(self, path, fi):
        flags = fi.flags
        fd = self._open_backing(self._full(path), flags)
        self._register(fi, fd, flags)
        if flags & os.O_TRUNC:
            self.truncate(path, 0, fi)
        return 0

    def create(self, path, mode, fi):
        flags = fi.flags | os.O_CREAT
        fd = self._open_backing(self._full(path), flags, mode)
        self._register(fi, fd, flags)
        if flags & os.O_TRUNC and os.fstat(fd).st_size:
            self.truncate(path, 0, fi)
        return 0

    def read(self, path, size, offset, fi):
        fh = fi.fh
        with self._mu:
            p = self.pending.get(self._key_of_fh(fh))
            if p is None:
                return os.pread(fh, size, offset)
            return p.read(size, offset)

    def write(self, path, data, offset, fi):
        fh = fi.fh
        with self._mu:
            p = self._pending_for_fh(fh)
            p.write(data, offset)
            if fh in self.sync_fhs:
                self._persist_range(p, data, offset)
            self.counters["writes"] += 1
            self.counters["write_bytes"] += len(data)
        return len(data)

    def truncate(self, path, length, fh=None):
        fd = self._fh(fh)
        with self._mu:
            if fd is not None:
                p = self._pending_for_fh(fd)
            else:
                p = self._pending_for_path(path)
            p.truncate(length)

    def flush(self, path, fi):
        return 0   # close() is not a sync

    def fsync(self, path, datasync, fi):
        with self._mu:
            self.counters["fsyncs"] += 1
            self._apply(self._key_of_fh(fi.fh))
        return 0

    def release(self, path, fi):
        fh = fi.fh
        with self._mu:
            self._unregister(fh)
            os.close(fh)
        return 0

    def destroy(self, path):
        log.info("unmounting; unsynced data lost with this process: %s",
                 json.dumps({k: v for k, v in self.stats().items() if k != "ok"}))


def _make_operations():
    from fuse import Operations  # fusepy; imported late so the helper side works without it

    class LazyOperations(_LazyFuseMethods, Operations):
        pass

    return LazyOperations


def _serve_control(ops, sock_path: str) -> None:
    with __import__("contextlib").suppress(FileNotFoundError):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(4)

    def loop():
        while True:
            conn, _ = srv.accept()
            with conn:
                try:
                    command = conn.makefile("r").readline().strip()
                    if command == "ping":
                        reply = {"ok": True}
                    elif command == "stats":
                        reply = ops.stats()
                    elif command == "drop":
                        reply = ops.drop_unsynced()
                        log.warning("power cut: dropped %d unsynced bytes in %d files",
                                    reply["dropped_bytes"], reply["dropped_files"])
                    else:
                        reply = {"ok": False, "error": f"unknown command {command!r}"}
                except Exception as exc:  # keep serving
                    log.exception("control command failed")
                    reply = {"ok": False, "error": repr(exc)}
                try:
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    pass

    threading.Thread(target=loop, name="lazyfs-control", daemon=True).start()


def _serve_sigusr1(ops) -> None:
    def loop():
        while True:
            signal.sigwait({signal.SIGUSR1})
            result = ops.drop_unsynced()
            log.warning("SIGUSR1 power cut: dropped %d unsynced bytes in %d files",
                        result["dropped_bytes"], result["dropped_files"])

    threading.Thread(target=loop, name="lazyfs-sigusr1", daemon=True).start()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--control", required=True, help="Unix socket path for commands")
    ap.add_argument("--backing-fsync", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--parent-pid", type=int, help="exit when this process (the test) dies")
    args = ap.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s lazyfs[%(process)d] %(levelname)s %(message)s")
    from fuse import FUSE

    ops = _make_operations()(args.backing, backing_fsync=args.backing_fsync)
    # SIGUSR1 is blocked in every thread (libfuse's threads inherit the mask) and taken by
    # sigwait in one thread: Python handlers would not run while the main thread is in C.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    _serve_sigusr1(ops)
    _serve_control(ops, args.control)
    FUSE(ops, args.mountpoint, raw_fi=True, foreground=True, nothreads=False,
         fsname="lazyfs", subtype="lazyfs", attr_timeout=0, entry_timeout=0,
         negative_timeout=0, use_ino=True, hard_remove=True, big_writes=True,
         max_write=131072)
    return 0


# ======================================================================================
# The helper (test side)
# ======================================================================================

def unavailable_reason() -> str | None:
    """Why a LazyFS can't run here, or None."""
    if os.geteuid() != 0:
        return "LazyFS needs root (FUSE mounts)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount") is None and shutil.which("fusermount3") is None:
        return "fusermount not found (Debian: apt-get install fuse3)"
    try:
        import fuse  # noqa: F401  (fusepy; raises EnvironmentError without libfuse2)
    except ImportError:
        return "fusepy is not installed (pip install fusepy==3.0.1)"
    except (OSError, EnvironmentError) as exc:
        return f"libfuse2 is not usable ({exc}; Debian: apt-get install libfuse2)"
    return None


def _die_with_parent(parent_pid: int) -> None:
    """In the daemon: SIGTERM itself (libfuse then unmounts) once the test process is gone.

    A watcher thread polls getppid() rather than prctl(PR_SET_PDEATHSIG): that signal
    fires when the parent *thread* that forked us exits, and a mount made from a
    short-lived thread (the jepsen nemesis remounts after each power cut) then died with
    it. Nor is it set in a Popen preexec_fn: that forces a plain fork() that runs Python
    in the child of a process with gRPC threads, and gRPC's fork handler there aborted
    the child (SIGABRT, "epoll_wait error: Bad file descriptor") in a CI run."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _fusermount() -> str:
    return shutil.which("fusermount") or shutil.which("fusermount3")


class LazyFS:
    """Mount `backing` at `mountpoint` through a LazyFS daemon; power-cut it on demand."""

    def __init__(self, backing: str, mountpoint: str, state_dir: str, *, debug: bool = False):
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        self.state_dir = os.path.abspath(state_dir)
        self.control = os.path.join(self.state_dir, "lazyfs.sock")
        self.log_path = os.path.join(self.state_dir, "lazyfs.log")
        self.debug = debug
        self.proc: subprocess.Popen | None = None
        self.mounts = 0
        self._atexit = False

    def mount(self, timeout_s: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already mounted"
        for d in (self.backing, self.mountpoint, self.state_dir):
            os.makedirs(d, exist_ok=True)
        argv = [sys.executable, os.path.abspath(__file__), self.backing, self.mountpoint,
                "--control", self.control, "--parent-pid", str(os.getpid())] + (
                    ["--debug"] if self.debug else [])
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if not self._atexit:
            atexit.register(self.cleanup)
            self._atexit = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs exited with {self.proc.returncode}: {self.read_log()[-2000:]}")
            if os.path.ismount(self.mountpoint):
                try:
                    if self.command("ping").get("ok"):
                        self.mounts += 1
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        self.cleanup()
        raise RuntimeError(f"lazyfs did not mount in {timeout_s} s: {self.read_log()[-2000:]}")

    def command(self, command: str, timeout_s: float = 30.0) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(self.control)
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def stats(self) -> dict:
        return self.command("stats")

    def drop_unsynced(self) -> dict:
        """Forget every unsynced byte now. Processes using the mount must be gone (their
        page cache would keep serving what was dropped): `power_cut` is the whole step."""
        return self.command("drop")

    def unmount(self, timeout_s: float = 15.0) -> None:
        """Unmount (lazily if busy) and wait for the daemon; its unsynced data dies with it."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout_s
        while os.path.ismount(self.mountpoint) and time.monotonic() < deadline:
            r = subprocess.run([_fusermount(), "-u", self.mountpoint], capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        if os.path.ismount(self.mountpoint):
            subprocess.run([_fusermount(), "-uz", self.mountpoint], capture_output=True)
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def power_cut(self) -> dict:
        """Drop everything not fsynced, as a power loss would, and mount again.

        Callers kill every process using the mount first (SIGKILL and wait): the kernel
        then hands us their dirty mmap pages as plain writes, which this drops too."""
        dropped = self.drop_unsynced()
        self.unmount()
        self.mount()
        return dropped

    def cleanup(self) -> None:
        """Never raises: for `finally` blocks."""
        try:
            if os.path.ismount(self.mountpoint):
                r = subprocess.run([_fusermount(), "-u", self.mountpoint], capture_output=True)
                if r.returncode != 0:
                    subprocess.run([_fusermount(), "-uz", self.mountpoint], capture_output=True)
        except Exception:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except Exception:
                pass
            self.proc = None

    def read_log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        self.mount()
        return self

    def __exit__(self, *exc):
        self.cleanup()


if __name__ == "__main__":
    sys.exit(main())
