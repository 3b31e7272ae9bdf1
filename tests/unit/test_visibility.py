"""Listing across shards (flow.visibility pages, flow.listing merge) against a model:
random workflows on three real LMDB shards, random filters, every order, small pages and
small scans. The pages concatenated must be exactly the model's sorted matches. Also the
index follows a workflow that closes and starts again (sm_common.save_workflow)."""

from hypothesis import given, settings, strategies as st

from coda.flow import listing, visibility
from coda.flow import sm_common as c
from coda.storage import keys
from coda.storage.env import ShardStore

SHARDS = 3
STATUSES = ("RUNNING", "COMPLETED", "FAILED")


def _record(workflow_id, status, wtype, start_ms, close_ms):
    return {"workflow_id": workflow_id, "run_id": "r", "workflow_type": wtype,
            "status": status, "start_time_ms": start_ms,
            "close_time_ms": close_ms if status != "RUNNING" else None}


WORKFLOW = st.tuples(st.sampled_from(["a", "ab", "b", "ba", "c"]), st.integers(0, 99),
                     st.sampled_from(STATUSES), st.sampled_from(["t1", "t2"]),
                     st.integers(1, 30), st.integers(0, 30))


def _stores(tmp_path_factory, records):
    stores = [ShardStore(str(tmp_path_factory.mktemp("shard"))) for _ in range(SHARDS)]
    for shard, store in enumerate(stores):
        batch = store.begin_batch()
        with batch.command() as txn:
            for r in records:
                if hash(r["workflow_id"]) % SHARDS == shard:
                    c.save_workflow(txn, r)
        batch.commit(1)
    return stores


def _page_all(stores, order, flt, page_size, scan_max):
    out, after = [], b""
    for _ in range(1000):
        pages = []
        for store in stores:
            with store.read() as txn:
                page = visibility.list_page(txn, order=order, after=after, flt=flt,
                                            page_size=page_size, scan_max=scan_max)
            pages.append(page)
        key = lambda r: visibility.cursor_key(order, r["workflow_id"], r["start_time_ms"],  # noqa: E731
                                              r.get("close_time_ms") or 0)
        items, after = listing.merge_ordered(pages, page_size, key=key,
                                             descending=visibility.descending(order))
        assert len(items) <= page_size
        out += [r["workflow_id"] for r in items]
        if after is None:
            return out
    raise AssertionError("paging did not end")


def _model(records, order, flt):
    field = order.lstrip("-")
    matches = [r for r in records if flt.matches(r)]
    if field == "close_time":
        matches = [r for r in matches if r.get("close_time_ms")]
    def sort_key(r):
        if field == "workflow_id":
            return r["workflow_id"].encode()
        return (r["start_time_ms"] if field == "start_time" else r["close_time_ms"],
                r["workflow_id"].encode())
    return [r["workflow_id"] for r in sorted(matches, key=sort_key,
                                             reverse=visibility.descending(order))]


# Each filter is absent in most examples, so most listings have many matches to page.
NO_RANGE = st.just((0, 0))


@settings(max_examples=150, deadline=None)
@given(raw=st.lists(WORKFLOW, min_size=5, max_size=60), order=st.sampled_from(visibility.ORDERS),
       statuses=st.one_of(st.just(set()), st.sets(st.sampled_from(STATUSES), max_size=2)),
       prefix=st.sampled_from(["", "", "", "a", "b", "ab"]),
       start_range=st.one_of(NO_RANGE, NO_RANGE, st.tuples(st.integers(0, 10), st.integers(0, 40))),
       close_range=st.one_of(NO_RANGE, NO_RANGE, st.tuples(st.integers(0, 20), st.integers(0, 80))),
       page_size=st.integers(1, 7), scan_max=st.integers(1, 9))
def test_pages_concatenate_to_the_models_matches(tmp_path_factory, raw, order, statuses,
                                                 prefix, start_range, close_range,
                                                 page_size, scan_max):
    records = {}
    for name, n, status, wtype, start, extra in raw:
        wid = f"{name}{n:02d}"
        records[wid] = _record(wid, status, wtype, start, start + extra)
    records = list(records.values())
    start_min, start_max = start_range[0], (start_range[1] if start_range[1] > start_range[0] else 0)
    close_min, close_max = (close_range[0], close_range[1] if close_range[1] > close_range[0]
                            else 0)
    flt = visibility.ListFilter(statuses=tuple(statuses), id_prefix=prefix,
                                start_min_ms=start_min, start_max_ms=start_max,
                                close_min_ms=close_min, close_max_ms=close_max)
    stores = _stores(tmp_path_factory, records)
    try:
        want = _model(records, order, flt)
        assert _page_all(stores, order, flt, page_size, scan_max) == want
    finally:
        for store in stores:
            store.close()


def test_index_follows_a_workflow_through_close_and_a_new_run(tmp_path):
    store = ShardStore(str(tmp_path / "s"))
    try:
        def write(record):
            batch = store.begin_batch()
            with batch.command() as txn:
                c.save_workflow(txn, record)
            batch.commit(1)

        def index():
            with store.read() as txn:
                return [keys.by_time_parts(k) + (k[:1],) for k, _ in
                        txn.scan(keys.WORKFLOWS_BY_TIME)]

        write(_record("w", "RUNNING", "t", 10, None))
        assert index() == [(10, "w", keys.BY_CLOSE)[:2] + (keys.BY_START,)]
        write(_record("w", "COMPLETED", "t", 10, 15))
        assert sorted(index()) == [(10, "w", keys.BY_START), (15, "w", keys.BY_CLOSE)]
        write(_record("w", "RUNNING", "t", 20, None))  # a new run: no close, a new start
        assert index() == [(20, "w", keys.BY_START)]
    finally:
        store.close()


def test_bad_order_and_token_for_another_order_are_refused():
    import pytest
    from coda.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="unknown order"):
        visibility.parse_order("size")
    token = listing.encode_cursor("start_time", b"k", "fp")
    assert listing.decode_cursor(token, "start_time", "fp") == b"k"
    with pytest.raises(InvalidArgument, match="different order"):
        listing.decode_cursor(token, "-start_time", "fp")
