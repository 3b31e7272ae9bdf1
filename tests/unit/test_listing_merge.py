"""The cross-shard merge of ListWorkflows pages: complete, ordered, duplicate-free."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from coda.errors import InvalidArgument
from coda.flow import listing


def shard_page(ids: list[str], after: str, page_size: int, scan_max: int, wanted) -> dict:
    """What flow.queries.list_page answers for one shard holding `ids` (sorted)."""
    items, scanned, last = [], 0, None
    for wid in ids:
        if wid.encode() <= after.encode() and after:
            continue
        if scanned >= scan_max or len(items) >= page_size:
            return {"items": items, "resume_after": last, "exhausted": False}
        scanned += 1
        last = wid
        if wanted(wid):
            items.append({"workflow_id": wid})
    return {"items": items, "resume_after": last, "exhausted": True}


@settings(max_examples=200, deadline=None)
@given(ids=st.sets(st.text("abcdef", min_size=1, max_size=4), max_size=60),
       shards=st.integers(1, 5), page_size=st.integers(1, 9), scan_max=st.integers(1, 12),
       modulus=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_paging_returns_every_match_once_in_order(ids, shards, page_size, scan_max, modulus, seed):
    rng = random.Random(seed)
    by_shard = [[] for _ in range(shards)]
    for wid in ids:
        by_shard[rng.randrange(shards)].append(wid)
    for s in by_shard:
        s.sort(key=str.encode)
    wanted = lambda wid: len(wid) % modulus == 0
    after, seen = "", []
    for _ in range(10_000):
        pages = [shard_page(s, after, page_size, scan_max, wanted) for s in by_shard]
        items, next_after = listing.merge(pages, page_size)
        assert len(items) <= page_size
        seen += [r["workflow_id"] for r in items]
        if next_after is None:
            break
        assert next_after.encode() > after.encode() or not after, "cursor must advance"
        after = next_after
    else:
        pytest.fail("paging did not terminate")
    expected = sorted((w for w in ids if wanted(w)), key=str.encode)
    assert seen == expected


def test_token_round_trip_and_filter_binding():
    fp = listing.filter_fingerprint(("RUNNING",), ("t",))
    token = listing.encode_token("wf-9", fp)
    assert listing.decode_token(token, fp) == "wf-9"
    assert listing.decode_token(b"", fp) == ""
    with pytest.raises(InvalidArgument, match="different filters"):
        listing.decode_token(token, listing.filter_fingerprint((), ()))
    with pytest.raises(InvalidArgument, match="malformed"):
        listing.decode_token(b"!!not-a-token!!", fp)
