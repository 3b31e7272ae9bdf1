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


META_LOAD_BUG = (
    "BUG (flow/raft_base.py): DurableFileJournal.__init__ runs pysyncobj's "
    "FileJournal.__init__, which reads the meta with the stock MetaStorer (it swallows every "
    "error and returns {}), and only then installs DurableMetaStorer, whose getMeta is never "
    "used for loading. A corrupt meta still starts the node at term 0 with no vote. Fix: "
    "after installing DurableMetaStorer, reload: self._FileJournal__meta = "
    "self._FileJournal__metaStorer.getMeta(). Remove this marker with the fix.")


@pytest.mark.xfail(strict=True, reason=META_LOAD_BUG)
def test_a_journal_with_corrupt_meta_refuses_to_open(tmp_path):
    journal_path = tmp_path / "raft.journal"
    (tmp_path / "raft.journal.meta").write_bytes(b"\x80\x04garbage")
    with pytest.raises(Exception):
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


def test_flush_msyncs_the_journal_after_an_append(tmp_path, monkeypatch):
    """DurableFileJournal.flush reaches the mmap's flush (msync) when entries were added."""
    calls = []
    real = raft_base.pjournal.ResizableFile.flush
    monkeypatch.setattr(raft_base.pjournal.ResizableFile, "flush",
                        lambda self: (calls.append(1), real(self))[1])
    journal = DurableFileJournal(str(tmp_path / "raft.journal"), str(tmp_path / "raft.snapshot"))
    try:
        journal.flush()
        assert calls == [], "a clean journal needs no msync"
        journal.add(b"cmd", 1, 1)
        journal.flush()
        assert calls == [1]
        journal.flush()
        assert calls == [1]
    finally:
        journal._destroy()
