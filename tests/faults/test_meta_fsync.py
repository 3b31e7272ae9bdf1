"""Raft term/vote/commit meta: stored durably, and a corrupt file stops the node.

Unit level, no FUSE needed: os.fsync and os.replace are wrapped to record what they were
called on, in what order, and what the file held at the time.
"""

from __future__ import annotations

import os
import stat

import pytest

import coda.flow.raft_base as raft_base
from coda.flow.raft_base import DurableFileJournal, DurableMetaStorer
from pysyncobj.pickle import dumps as pdumps


def _describe_fd(fd: int) -> tuple[str, bool]:
    path = os.readlink(f"/proc/self/fd/{fd}")
    return path, stat.S_ISDIR(os.fstat(fd).st_mode)


@pytest.fixture
def recorder(monkeypatch):
    """events: ("fsync", path, is_dir, bytes on disk or None) and ("replace", src, dst)."""
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        path, is_dir = _describe_fd(fd)
        content = None
        if not is_dir:
            with open(path, "rb") as f:
                content = f.read()
        events.append(("fsync", path, is_dir, content))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_replace(src, dst, **kw)

    def rename(src, dst, **kw):
        events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        return real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def _check_durable_store(events, path: str, meta: dict) -> None:
    path = os.path.abspath(path)
    tmp = path + ".tmp"
    directory = os.path.dirname(path)
    kinds = [(e[0], e[1]) for e in events]
    assert ("fsync", tmp) in kinds, f"the temp file was never fsynced: {kinds}"
    assert ("replace", tmp) in kinds, f"the temp file was never renamed into place: {kinds}"
    i_file = kinds.index(("fsync", tmp))
    i_rename = kinds.index(("replace", tmp))
    dir_syncs = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == directory and e[2]]
    assert i_file < i_rename, "the temp file must be fsynced before the rename"
    assert events[i_rename][2] == path
    assert events[i_file][3] == pdumps(meta), "fsync happened before the data was written"
    assert any(i > i_rename for i in dir_syncs), (
        f"the directory {directory} must be fsynced after the rename: {kinds}")


def test_store_meta_fsyncs_file_then_renames_then_fsyncs_directory(tmp_path, recorder):
    path = str(tmp_path / "raft.journal.meta")
    meta = {"currentTerm": 7, "votedForNodeId": "127.0.0.1:4001", "raftCommitIndex": 42}
    DurableMetaStorer(path).storeMeta(meta)
    _check_durable_store(recorder, path, meta)
    assert DurableMetaStorer(path).getMeta() == meta


def test_journal_stores_term_and_vote_durably(tmp_path, recorder):
    """The journal's own storer is the durable one (setCurrentTerm stores synchronously)."""
    journal_path = str(tmp_path / "raft.journal")
    journal = DurableFileJournal(journal_path, str(tmp_path / "raft.snapshot"))
    try:
        recorder.clear()
        journal.setCurrentTerm(3, "127.0.0.1:4002")
        stored = {"currentTerm": 3, "votedForNodeId": "127.0.0.1:4002"}
        _check_durable_store(recorder, journal_path + ".meta", stored)
        recorder.clear()
        journal.setRaftCommitIndex(9)
        journal.onOneSecondTimer()    # the commit index is saved at most once a second
        _check_durable_store(recorder, journal_path + ".meta", {**stored, "raftCommitIndex": 9})
    finally:
        journal._destroy()


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", pdumps({"currentTerm": 5})[:-3]],
                         ids=["empty", "garbage", "truncated"])
def test_get_meta_raises_on_a_corrupt_file(tmp_path, content):
    path = tmp_path / "raft.journal.meta"
    path.write_bytes(content)
    with pytest.raises(Exception):
        DurableMetaStorer(str(path)).getMeta()


def test_get_meta_of_a_missing_file_is_empty(tmp_path):
    assert DurableMetaStorer(str(tmp_path / "raft.journal.meta")).getMeta() == {}


def test_a_journal_with_corrupt_meta_refuses_to_open(tmp_path):
    """pysyncobj's own storer reads a corrupt meta as {} (term 0, no vote); ours refuses."""
    journal_path = tmp_path / "raft.journal"
    (tmp_path / "raft.journal.meta").write_bytes(b"\x80\x04garbage")
    with pytest.raises(RuntimeError, match="unreadable"):
        journal = DurableFileJournal(str(journal_path), str(tmp_path / "raft.snapshot"))
        journal._destroy()


def test_a_journal_reopens_with_its_stored_term_and_vote(tmp_path):
    journal_path = str(tmp_path / "raft.journal")
    journal = DurableFileJournal(journal_path, str(tmp_path / "raft.snapshot"))
    journal.setCurrentTerm(4, "n2")
    journal._destroy()
    again = DurableFileJournal(journal_path, str(tmp_path / "raft.snapshot"))
    try:
        assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (4, "n2")
    finally:
        again._destroy()


def test_flush_fdatasyncs_the_journal_after_an_append(tmp_path, monkeypatch):
    """DurableFileJournal.flush fdatasyncs the journal's own file when entries were added
    (not mmap.flush: CPython's msync holds the GIL and stalled the whole node)."""
    journal_path = tmp_path / "raft.journal"
    synced_inodes = []
    real = os.fdatasync
    monkeypatch.setattr(raft_base.os, "fdatasync",
                        lambda fd: (synced_inodes.append(os.fstat(fd).st_ino), real(fd))[1])
    monkeypatch.setattr(raft_base.pjournal.ResizableFile, "flush",
                        lambda self: pytest.fail("the journal must not be msynced"))
    journal = DurableFileJournal(str(journal_path), str(tmp_path / "raft.snapshot"))
    inode = journal_path.stat().st_ino
    try:
        assert synced_inodes == [inode], "a new journal's header is flushed at once"
        synced_inodes.clear()
        journal.flush()
        assert synced_inodes == [], "a clean journal needs no sync"
        journal.add(b"cmd", 1, 1)
        journal.flush()
        assert synced_inodes == [inode]
        journal.flush()
        assert synced_inodes == [inode]
    finally:
        monkeypatch.undo()  # _destroy flushes the mmap itself
        journal._destroy()


def _entries(n: int, start: int = 1, term: int = 1):
    return [(b"cmd-%d" % i, i, term) for i in range(start, start + n)]


def test_compaction_rewrites_the_journal_into_a_new_file(tmp_path):
    """The cut writes a new file and renames it over the journal (never an in-place
    rewrite, which a crash could leave short); the result reopens with the kept entries."""
    journal_path = str(tmp_path / "raft.journal")
    journal = DurableFileJournal(journal_path, str(tmp_path / "raft.snapshot"))
    for entry in _entries(50):
        journal.add(*entry)
    journal.flush()
    inode_before = os.stat(journal_path).st_ino
    journal.deleteEntriesTo(40)
    assert [e[1] for e in journal] == list(range(41, 51))
    assert os.stat(journal_path).st_ino != inode_before, "compaction rewrote in place"
    journal.add(b"after", 51, 2)
    journal.flush()
    journal._destroy()
    again = DurableFileJournal(journal_path, str(tmp_path / "raft.snapshot"))
    try:
        assert [(e[1], e[2]) for e in again] == [(i, 1) for i in range(41, 51)] + [(51, 2)]
        assert again[-1][0] == b"after"
    finally:
        again._destroy()
    assert not os.path.exists(journal_path + ".compact")


def test_compaction_never_cuts_the_last_entry(tmp_path):
    journal = DurableFileJournal(str(tmp_path / "raft.journal"), str(tmp_path / "raft.snapshot"))
    try:
        for entry in _entries(3):
            journal.add(*entry)
        journal.deleteEntriesTo(3)
        assert len(journal) == 3
    finally:
        journal._destroy()


def test_a_journal_that_was_never_flushed_starts_anew(tmp_path):
    """A power cut right after creation can leave a file shorter than the header (nothing
    in it was ever acknowledged); pysyncobj can't mmap it, so it is started anew, and the
    leftover of an interrupted rewrite is discarded."""
    journal_path = tmp_path / "raft.journal"
    journal_path.write_bytes(b"")
    (tmp_path / "raft.journal.compact").write_bytes(b"partial")
    journal = DurableFileJournal(str(journal_path), str(tmp_path / "raft.snapshot"))
    try:
        assert len(journal) == 0
        assert os.path.getsize(journal_path) >= 40
        assert not (tmp_path / "raft.journal.compact").exists()
    finally:
        journal._destroy()
