"""Regressions found by bench/bench_broadcast.py: a burst of 2,000 concurrent reads.

1. py-lmdb frees a read transaction's reader slot only when the Transaction object dies;
   tracebacks of errors answered while other reads waited kept frames holding it, and
   256 of them filled the reader table (MDB_READERS_FULL on DescribeWorkflow).
2. grpc cancels a share of a large burst of calls on one channel before any handler
   runs (status CANCELLED, none of our trailers): that is an unknown outcome, which the
   client retries like any other, not an Internal error.
"""

import grpc
import pytest

from coda import errors
from coda.flow import wire
from coda.storage.env import LmdbOptions, ShardStore


def test_errors_raised_inside_reads_do_not_hold_reader_slots(tmp_path):
    store = ShardStore(str(tmp_path / "s"), LmdbOptions(max_readers=4, sync=False,
                                                        metasync=False))
    kept = []
    try:
        for n in range(50):
            try:
                with store.read() as txn:
                    txn.get("meta", b"nothing")
                    raise KeyError(n)  # its traceback holds this frame, and txn
            except KeyError as exc:
                kept.append(exc)
        assert len(kept) == 50
        with pytest.raises(AttributeError):
            kept[0].__traceback__.tb_frame.f_locals["txn"].get("meta", b"x")  # closed
    finally:
        store.close()


def test_a_transport_cancel_is_an_unknown_outcome_that_is_retried():
    exc = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(),
                               grpc.aio.Metadata(), details="CANCELLED")
    err = wire.error_from_rpc(exc, target="127.0.0.1:1")
    assert isinstance(err, errors.Indeterminate) and err.retryable and not err.definite
