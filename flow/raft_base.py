"""pysyncobj 0.3.17 made durable and safe for a state machine in LMDB.

Every trap of shared/notes/pysyncobj.md that lives inside pysyncobj is handled here, in
one class, so the replica (flow.replica) reads as plain Raft:

1. Nothing was fsynced. `DurableFileJournal` marks itself dirty on every write and
   `flush()` fdatasyncs the file (without holding the GIL; the file is written with
   pwrite, not through pysyncobj's mmap: `PwriteFile`); `DurableSyncObj` flushes (a) at
   the start of every tick, before the leader counts its own copy toward a commit, (b)
   right after becoming leader, and (c) on a follower, before any successful append
   acknowledgement leaves. So an
   entry counts toward a majority only once it is on disk, on every node that counted.
2. Term and vote went to a `.meta` file without fsync, and a corrupt meta file read as
   "term 0, no vote" (a double-vote risk). `DurableMetaStorer` writes tmp + fsync +
   rename + fsync(dir) and lets a corrupt file fail loudly.
3. Compaction could empty the log (`deleteEntriesTo(n >= len-1)`): refused here, and the
   snapshot's rename is made durable before the journal is cut.
4. Next-index regression: a successful append ack for an earlier pipelined batch moved
   the leader's next index backwards, and the follower then deleted entries it had
   already applied (any append overlapping its log truncated unconditionally).
   `_SyncObj__onMessageReceived` is wrapped so that (a) a follower trims an append to the
   entries it does not already hold (Raft section 5.3: delete only on a real conflict),
   and (b) a successful ack never moves the leader's next index backwards.
5. Compaction is two steps: the new snapshot is renamed into place in one tick, the
   journal is cut to it in the next. A node killed in between restarts with a journal
   that does not start at the snapshot, and pysyncobj then replaced the whole journal
   with the snapshot's two entries, dropping entries after it that this node had
   acknowledged. `finish_compaction`, called by the deserializer, makes the cut instead
   when the journal holds the snapshot's last two entries, keeping the entries after it.
   The cut itself rewrites the journal into a new file renamed into place (pysyncobj
   rewrote it in place: a crash mid-way lost acknowledged entries).
6. Snapshots were renamed into place without fsync (a follower's received snapshot came
   back empty after a power cut): pysyncobj's atomicReplace is replaced by a durable one.
   A journal shorter than its header was never flushed and is started anew.
7. A dial whose SYN was dropped during a partition was never timed out (reconnection
   took the kernel's SYN backoff, up to a minute): stuck attempts are abandoned.
8. With batching on, a proposal waited for the next tick (autoTickPeriod) before it was
   logged and sent, so latency needed a short tick and a short tick burned CPU when idle
   (12 tick threads at 5 ms: ~0.2 cores doing nothing). `wake()` rouses the tick thread's
   poll through a pipe as soon as a command is queued; the tick period is then only the
   resolution of timers (elections, heartbeats), and can be long.
9. A connection pysyncobj has not read from for connectionTimeout is dropped by the next
   send on it, and that message with it. Followers never talk to each other, so when a
   leader died, the first candidate's vote request to the other follower was dropped at
   send time: the election failed and took a second election timeout (kill -9 of a
   leader to the next commit measured 4.2-4.7 s). Every node now pings each peer once a
   second (`coda_ping`, swallowed on receipt), so no live link goes quiet.
10. The leader flushed its new entries at the start of the tick after the followers'
   acks arrived: a commit paid the followers' fdatasync and then the leader's, one after
   the other. It now flushes right after sending them, so the two overlap (the flush at
   the start of each tick stays: it is what makes counting the leader's copy safe).
11. Every message was zlib-compressed and sealed with Fernet (~20-100 us a message each
   way, ~8 % of a leader's samples under W-seq). Frames are now sealed with AES-GCM, not
   compressed (flow.raft_wire): `DurableSyncObj` takes the cluster secret out of the conf
   (pysyncobj derives no Fernet key) and hands the transport a `RaftCipher` as its
   encryptor; pysyncobj's connection class is replaced by `RaftConnection` in its
   transport and server modules (every SyncObj of a Coda process is one of ours; a
   connection without a RaftCipher keeps pysyncobj's framing).
12. A send the socket buffer could not take whole kept its rest in the connection's
   buffer until the next send on it (pysyncobj watches "writable" only while
   connecting): with appends of write sets no longer compressed, W-fan stalled ~100 ms
   (one heartbeat period) at a time. `RaftConnection` watches the socket until the rest
   is out, and the socket buffers hold a whole append batch (replica.raft_conf).

pysyncobj private names are mangled (`_SyncObj__x`); a subclass that defines the mangled
name overrides it. This leans on pysyncobj==0.3.17 exactly (pinned in pyproject.toml).
"""

from __future__ import annotations

import logging
import os
import struct
import time

import pysyncobj.journal as pjournal
import pysyncobj.serializer as pserializer
import pysyncobj.syncobj as psyncobj
import pysyncobj.tcp_server as ptcp_server
import pysyncobj.transport as ptransport
from pysyncobj import SyncObj
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.pickle import dumps as _pdumps, loads as _ploads

from coda.flow.raft_wire import RaftConnection, cipher_for

log = logging.getLogger(__name__)

# 11: Raft frames sealed with AES-GCM (flow.raft_wire), on every connection pysyncobj makes.
ptransport.TcpConnection = RaftConnection
ptcp_server.TcpConnection = RaftConnection


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableMetaStorer(pjournal.MetaStorer):
    """Term, vote and commit index: written atomically and durably."""

    def storeMeta(self, meta):
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_pdumps(meta))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def getMeta(self):
        path = self.getPath()
        if not os.path.exists(path):
            return {}
        with open(path, "rb") as f:
            data = f.read()
        try:
            return _ploads(data)
        except Exception as exc:
            # Never "term 0, no vote": that could vote twice in one term.
            raise RuntimeError(f"Raft meta file {path} ({len(data)} bytes) is unreadable "
                               f"({exc!r}); refusing to start with a forgotten term and "
                               "vote. Restore it or rebuild this replica from its peers.") from None


class PwriteFile:
    """The journal file under pysyncobj's FileJournal, written with os.pwrite instead of
    through pysyncobj's mmap (its ResizableFile: write, read, flush, _destroy).

    A store into a file-backed mmap page that the last fdatasync wrote back faults (the
    kernel write-protects clean shared pages to track dirtying), and the fault is taken
    holding the GIL: each append (a record, then the header's last-record offset on page
    0) stalled every thread of the node. ResizableFile.write was 8.9 % of the nodes' GIL
    samples under W-seq (bench_execution.py --profile). os.pwrite copies into the same
    page cache, releases the GIL and faults nothing in user space. The file still grows
    by doubling (ftruncate), as pysyncobj's did, so most fdatasyncs have no size to write."""

    def __init__(self, path: str):
        self._file = open(path, "r+b")
        self._fd = self._file.fileno()
        self._allocated = os.fstat(self._fd).st_size

    def fileno(self) -> int:
        return self._fd

    def write(self, offset: int, values: bytes) -> None:
        end = offset + len(values)
        if end > self._allocated:
            self._allocated = max(self._allocated * 2, end)
            os.ftruncate(self._fd, self._allocated)
        os.pwrite(self._fd, values, offset)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def _destroy(self) -> None:
        self._file.close()


class DurableFileJournal(pjournal.FileJournal):
    """pysyncobj's mmap journal, flushed to disk on demand (see module docstring)."""

    def __init__(self, path: str, snapshot_path: str):
        _discard_unflushed_journal(path)
        pjournal.FileJournal.__init__(self, path)  # reads the records through its mmap
        self._FileJournal__journalFile._destroy()
        self._FileJournal__journalFile = PwriteFile(path)
        # pysyncobj read the meta with its stock storer, which turns a corrupt file into
        # {}; read it again with ours, which refuses.
        self._FileJournal__metaStorer = DurableMetaStorer(path + ".meta")
        self._FileJournal__meta = self._FileJournal__metaStorer.getMeta()
        self._path = path
        self._snapshot_path = snapshot_path
        self.flushes = 0
        self.dirty = True  # a new journal's header must be on disk before anything else
        self.flush()
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    # Set by the replica while its leader appends proposals (flow.speculation): the entry
    # stored, and replicated, in place of each command.
    transform = None

    def add(self, command, idx, term):
        if self.transform is not None:
            command = self.transform(command, idx, term)
        pjournal.FileJournal.add(self, command, idx, term)
        self.dirty = True

    def clear(self):
        pjournal.FileJournal.clear(self)
        self.dirty = True

    def deleteEntriesFrom(self, entryFrom):
        pjournal.FileJournal.deleteEntriesFrom(self, entryFrom)
        self.dirty = True

    def deleteEntriesTo(self, entryTo):
        if entryTo >= len(self) - 1:
            log.error("refusing to compact the Raft log to nothing (cut at %d of %d entries)",
                      entryTo, len(self))
            return
        # The snapshot replacing these entries must be durable before they go.
        fsync_dir(os.path.dirname(os.path.abspath(self._snapshot_path)))
        self._rewrite(self._FileJournal__journal[entryTo:])

    def _rewrite(self, entries) -> None:
        """Replace the journal by `entries`, atomically: write a new file, fsync, rename.

        pysyncobj rewrote the mmap in place (clear, then re-add): a crash in the middle
        left a journal missing entries this node had acknowledged.
        """
        tmp = self._path + ".compact"
        header = bytearray(self._FileJournal__getDefaultHeader())
        offset = pjournal.FIRST_RECORD_OFFSET
        with open(tmp, "wb") as f:
            f.write(header)
            for command, idx, term in entries:
                record = struct.pack("<QQ", idx, term) + pjournal.to_bytes(command)
                size = struct.pack("<I", len(record))
                f.write(size + record + size)
                offset += len(record) + 8
            f.seek(pjournal.LAST_RECORD_OFFSET_OFFSET)
            f.write(struct.pack("<I", offset))
            f.flush()
            os.fsync(f.fileno())
        self._FileJournal__journalFile._destroy()
        os.replace(tmp, self._path)
        fsync_dir(os.path.dirname(os.path.abspath(self._path)))
        self._FileJournal__journalFile = PwriteFile(self._path)
        self._FileJournal__journal = list(entries)
        self._FileJournal__currentOffset = offset
        self.dirty = False

    def flush(self):
        """Make every entry written so far durable.

        fdatasync of the journal's file (written by PwriteFile), with the GIL released.
        pysyncobj's mmap.flush() was an msync CPython runs holding the GIL: each flush
        stalled every thread of the node (the asyncio loop and the other shards' tick
        threads), 41% of the nodes' GIL time under W-seq (bench_execution.py --profile).
        """
        if self.dirty:
            os.fdatasync(self._FileJournal__journalFile.fileno())
            self.dirty = False
            self.flushes += 1


def _discard_unflushed_journal(path: str) -> None:
    """A journal shorter than its header was never flushed (a flush writes the header
    first): it holds nothing this node acknowledged, and pysyncobj can't mmap an empty
    file. Left-overs of an interrupted rewrite (`.compact`) are dropped too."""
    if os.path.exists(path) and os.path.getsize(path) < pjournal.FIRST_RECORD_OFFSET:
        log.warning("journal %s was never flushed (%d bytes); starting it anew", path,
                    os.path.getsize(path))
        os.unlink(path)
    if os.path.exists(path + ".compact"):
        os.unlink(path + ".compact")


def _durable_replace(src: str, dst: str) -> bool:
    """pysyncobj's atomicReplace, made durable: a snapshot received from the leader (or
    written by us) must be on disk before the journal entries it replaces are cut."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    return True


pserializer.atomicReplace = _durable_replace


# pysyncobj builds its journal through this module-level name, with only the path. Route it
# through a registry keyed by journal path so each replica gets a journal that knows its
# snapshot file. Installed once per process; paths not registered get the stock journal.
_SNAPSHOT_FOR_JOURNAL: dict[str, str] = {}
_stock_create_journal = psyncobj.createJournal


def _create_journal(journalFile=None):
    if journalFile is not None and journalFile in _SNAPSHOT_FOR_JOURNAL:
        return DurableFileJournal(journalFile, _SNAPSHOT_FOR_JOURNAL[journalFile])
    return _stock_create_journal(journalFile)


psyncobj.createJournal = _create_journal


def register_journal(journal_path: str, snapshot_path: str) -> None:
    _SNAPSHOT_FOR_JOURNAL[journal_path] = snapshot_path


class DurableSyncObj(SyncObj):
    """SyncObj with durable acks and the next-index/truncation fix (module docstring)."""

    def __init__(self, self_node, other_nodes, conf):
        # 11: the secret keys our RaftCipher; pysyncobj gets none (no Fernet of its own).
        secret, conf.password = conf.password, None
        self._raft_cipher = cipher_for(secret) if secret else None
        super().__init__(self_node, other_nodes, conf)

    @property
    def encryptor(self):
        return self._raft_cipher

    @property
    def raft_journal(self):
        return self._SyncObj__raftLog

    # 8: wake the tick thread when a command is queued.
    def install_waker(self) -> None:
        """Subscribe a pipe to the tick thread's poller; call once, after __init__.

        Registering from this thread while the tick thread polls is safe: select.poll
        only rebuilds its fd array at the start of the next poll() call."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_pending = False
        self._poller.subscribe(self._wake_r, self._on_wake, POLL_EVENT_TYPE.READ)

    def wake(self) -> None:
        """Any thread, after queueing a command: the tick thread logs and sends it now.
        One byte per tick at most: later commands find the wake-up already pending."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups: the tick thread is surely woken

    def _on_wake(self, descr, event_mask) -> None:
        # Drain first, then clear. Cleared first, a wake() between the two lines would
        # write a byte the drain then swallows, leaving the flag set with an empty pipe:
        # no wake-up ever again, every proposal waiting a whole tick (seen: 50 ms per
        # hop). This way a wake() before the clear skips writing, and its command, queued
        # before it looked at the flag, is taken by the next tick's _checkCommandsToApply.
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._wake_pending = False

    def close_waker(self) -> None:
        for fd in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    def _flush_journal(self) -> None:
        journal = self._SyncObj__raftLog
        if isinstance(journal, DurableFileJournal):
            journal.flush()

    # 1a: the leader counts its own copy in _onTick; only flushed entries may count.
    def _onTick(self, timeToWait=0.0):
        self._flush_journal()
        self._drop_stuck_connections()
        self._ping_peers()
        return SyncObj._onTick(self, timeToWait)

    # 9: keep every link read from, so a first message on it is never dropped as stale.
    PING_PERIOD_S = 1.0
    PING = {"type": "coda_ping"}

    def _ping_peers(self) -> None:
        now = time.monotonic()
        if now < getattr(self, "_ping_due_s", 0.0):
            return
        self._ping_due_s = now + self.PING_PERIOD_S
        transport = self._SyncObj__transport
        for node in self._SyncObj__otherNodes:
            transport.send(node, self.PING)  # False (not connected) is fine: nothing to keep

    # 7: pysyncobj never times out a connection attempt in progress; after a partition
    # heals, a dial whose SYN was dropped waits for the kernel's SYN retries (1, 2, 4 ...
    # 64 s). Abandon attempts older than connectionTimeout so pysyncobj dials again.
    _STUCK_CHECK_PERIOD_S = 0.5

    def _drop_stuck_connections(self) -> None:
        now = time.monotonic()
        if now < getattr(self, "_stuck_check_due_s", 0.0):
            return
        self._stuck_check_due_s = now + self._STUCK_CHECK_PERIOD_S
        transport = self._SyncObj__transport
        timeout_s = self._SyncObj__conf.connectionTimeout
        for conn in list(getattr(transport, "_connections", {}).values()):
            started = getattr(conn, "_TcpConnection__lastReadTime", now)
            if conn.state == CONNECTION_STATE.CONNECTING and now - started > timeout_s:
                conn.disconnect()

    # Latency: pysyncobj sends new entries only when appendEntriesPeriod has passed since
    # the last send (up to 10 ms idle per command). Send as soon as a tick has drained the
    # proposal queue into the log; everything queued in that tick still goes as one batch.
    # 10: then flush them here, while the followers write theirs, not at the next tick
    # after their acks came back (a commit waited for the leader's fdatasync after the
    # round trip: ~0.35 of 3.4 ms per commit, measured by stage stamps under W-lat).
    def _checkCommandsToApply(self):
        journal = self._SyncObj__raftLog
        before = journal[-1][1] if len(journal) else 0
        SyncObj._checkCommandsToApply(self)
        if self._isLeader() and len(journal) and journal[-1][1] > before:
            self._SyncObj__sendAppendEntries()
            self._on_entries_sent()
            self._flush_journal()

    def _on_entries_sent(self) -> None:
        """The leader has sent this tick's new entries and is about to flush them (the
        flush releases the GIL): work for another thread handed over here overlaps it."""

    # 1b: a new leader appends a no-op and may count it at once (single-node cluster).
    def _SyncObj__onBecomeLeader(self):
        SyncObj._SyncObj__onBecomeLeader(self)
        self._flush_journal()

    # 1c: a follower's successful append ack leaves only after its entries are on disk.
    def _SyncObj__sendNextNodeIdx(self, node, reset=False, nextNodeIdx=None, success=False):
        if success:
            self._flush_journal()
        return SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset,
                                                 nextNodeIdx=nextNodeIdx, success=success)

    # 5: a crash between a snapshot's rename and the journal cut.
    def finish_compaction(self, last_entry, prev_entry) -> None:
        """Cut the journal to a snapshot whose last two entries are (prev_entry, last_entry),
        if it holds them further on (a compaction a crash interrupted). pysyncobj keeps a
        journal that starts with them and replaces any other by them alone."""
        journal = self._SyncObj__raftLog
        if len(journal) < 2:
            return
        cut = prev_entry[1] - journal[0][1]
        if 0 < cut < len(journal) - 1 and tuple(journal[cut]) == tuple(prev_entry) \
                and tuple(journal[cut + 1]) == tuple(last_entry):
            log.warning("journal starts at %d, before the snapshot at %d: finishing the "
                        "interrupted compaction", journal[0][1], last_entry[1])
            journal.deleteEntriesTo(cut)

    # 4: next-index regression and truncation of applied entries.
    def _SyncObj__onMessageReceived(self, node, message):
        kind = message.get("type")
        if kind == "coda_ping":
            return None  # 9: its arrival already refreshed the link; nothing else to do
        if (kind == "append_entries" and "prevLogIdx" in message
                and message.get("transmission") is None
                and message.get("term", -1) >= self.raftCurrentTerm):
            self._trim_known_entries(message)
        if kind == "next_node_idx" and self._isLeader():
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if (before is not None and node in next_index and message.get("success")
                    and not message.get("reset")):
                next_index[node] = max(before, next_index[node])
            return None
        return SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _trim_known_entries(self, message: dict) -> None:
        """Rewrite an append so pysyncobj deletes entries only on a real term conflict.

        pysyncobj deletes everything after prevLogIdx whenever it holds anything there.
        We drop the leading entries we already hold with the same term and move prevLogIdx
        past them; if nothing new remains, we point prevLogIdx at the furthest index known
        to match the leader (our last entry if it is of the leader's term — Log Matching —
        else at least our commit index), so nothing committed is ever cut.
        """
        journal = self._SyncObj__raftLog
        first, last = journal[0][1], journal[-1][1]

        def term_at(index):
            if index is None or not first <= index <= last:
                return None
            return journal[index - first][2]

        prev_index = message["prevLogIdx"]
        if prev_index is None or term_at(prev_index) != message["prevLogTerm"]:
            return  # pysyncobj rejects it and resets the leader's next index: correct
        entries = message.get("entries") or []
        held = 0
        while held < len(entries) and term_at(entries[held][1]) == entries[held][2]:
            held += 1
        if held:
            message["prevLogIdx"], message["prevLogTerm"] = entries[held - 1][1], entries[held - 1][2]
            message["entries"] = entries = entries[held:]
        if entries:
            return
        if journal[-1][2] == message["term"]:
            safe = last
        else:
            safe = max(message["prevLogIdx"], min(self.raftCommitIndex, last))
        message["prevLogIdx"], message["prevLogTerm"] = safe, term_at(safe)
