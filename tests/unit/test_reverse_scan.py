"""LmdbTxn.scan_reverse against a model: every prefix and upper bound, keys with 0xff bytes
(the prefix's end is computed by incrementing its last byte below 0xff)."""

from hypothesis import given, settings, strategies as st

from coda.storage import keys
from coda.storage.env import ShardStore

KEY = st.binary(min_size=1, max_size=4).map(lambda b: bytes(c % 3 and 0x61 + c % 2 or 0xff for c in b))


@settings(max_examples=60, deadline=None)
@given(stored=st.sets(KEY, max_size=40), prefix=st.one_of(st.just(b""), KEY),
       before=st.one_of(st.none(), st.just(b""), KEY))
def test_reverse_scan_matches_the_model(tmp_path_factory, stored, prefix, before):
    store = ShardStore(str(tmp_path_factory.mktemp("rev")))
    try:
        batch = store.begin_batch()
        with batch.command() as txn:
            for key in stored:
                txn.put(keys.STATE, key, b"v" + key)
        batch.commit(1)
        with store.read() as txn:
            got = list(txn.scan_reverse(keys.STATE, prefix=prefix, before=before))
        want = [(k, b"v" + k) for k in sorted(stored, reverse=True)
                if k.startswith(prefix) and (before is None or k < before)]
        assert got == want
    finally:
        store.close()
