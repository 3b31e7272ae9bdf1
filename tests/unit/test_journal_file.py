"""The Raft journal file (flow.raft_base.DurableFileJournal over PwriteFile): what was
appended, truncated and compacted is exactly what a reopened journal reads, in
pysyncobj's own record format (its FileJournal parses it on open). Real files.
"""

from __future__ import annotations

import os
import random

import pysyncobj.journal as pjournal

from coda.flow.raft_base import DurableFileJournal, PwriteFile


def entries_of(journal) -> list[tuple[bytes, int, int]]:
    return [tuple(journal[i]) for i in range(len(journal))]


def reopen(path: str) -> DurableFileJournal:
    return DurableFileJournal(path, path + ".snapshot")


def test_appends_survive_reopen_and_grow_the_file_by_doubling(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = reopen(path)
    rng = random.Random(7)
    written = []
    for idx in range(1, 600):
        command = rng.randbytes(rng.choice([1, 40, 900, 5000]))
        journal.add(command, idx, 1 + idx // 100)
        written.append((command, idx, 1 + idx // 100))
    journal.flush()
    assert journal.flushes >= 1 and not journal.dirty
    size = os.path.getsize(path)
    data_end = pjournal.FIRST_RECORD_OFFSET + sum(len(c) + 16 + 8 for c, _, _ in written)
    # Grown by doubling: room past the data, but never more than twice what it holds.
    assert data_end <= size <= 2 * data_end
    journal._destroy()
    again = reopen(path)
    assert entries_of(again) == written
    again._destroy()


def test_truncation_then_appends_read_back_after_reopen(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = reopen(path)
    for idx in range(1, 51):
        journal.add(b"a" * idx, idx, 1)
    journal.deleteEntriesFrom(30)   # keeps the first 30 entries (indexes 1-30)
    for idx in range(31, 41):
        journal.add(b"b" * idx, idx, 2)
    expected = [(b"a" * i, i, 1) for i in range(1, 31)] + [(b"b" * i, i, 2) for i in range(31, 41)]
    assert entries_of(journal) == expected
    journal.flush()
    journal._destroy()
    again = reopen(path)
    assert entries_of(again) == expected
    again._destroy()


def test_compaction_rewrite_keeps_the_tail_and_accepts_appends(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = reopen(path)
    for idx in range(1, 101):
        journal.add(idx.to_bytes(4, "big") * 10, idx, 3)
    journal.deleteEntriesTo(90)     # the journal now starts at index 91
    journal.add(b"after", 101, 4)
    expected = [(i.to_bytes(4, "big") * 10, i, 3) for i in range(91, 101)] + [(b"after", 101, 4)]
    assert entries_of(journal) == expected
    journal.flush()
    journal._destroy()
    again = reopen(path)
    assert entries_of(again) == expected
    again._destroy()


def test_pwrite_file_reads_what_it_wrote_past_its_first_size(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 16)
    f = PwriteFile(str(path))
    f.write(10, b"hello")
    f.write(1000, b"world")         # past the end: the file grows (doubling, at least)
    assert f.read(10, 5) == b"hello" and f.read(1000, 5) == b"world"
    assert os.path.getsize(path) >= 1005
    f.flush()
    f._destroy()
    assert path.read_bytes()[1000:1005] == b"world"
