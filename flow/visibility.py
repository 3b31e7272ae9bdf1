"""Listing workflows: filters, sort orders and one shard's page, pure like the queries.

Orders: by workflow id (the WORKFLOWS db's own order), by start time or by close time
(the WORKFLOWS_BY_TIME index, kept by sm_common.save_workflow in the same transaction
as the row). A leading "-" is descending. Each order has a *cursor key*, bytes that sort
like the order and are unique per workflow: the id, or u64(time) + id. A shard returns
its matches after the cursor and how far it looked (resume_after), so flow.listing can
merge shard pages exactly (see there). Only current runs are listed; by close time, only
closed ones (a running workflow has no close time).
"""

from __future__ import annotations

from dataclasses import dataclass

from coda.errors import InvalidArgument
from coda.storage import codec, keys
from coda.storage.txn import Txn

ORDERS = ("workflow_id", "-workflow_id", "start_time", "-start_time", "close_time",
          "-close_time")
_FIELDS = {"start_time": keys.BY_START, "close_time": keys.BY_CLOSE}


def parse_order(order: str) -> str:
    order = order or "workflow_id"
    if order not in ORDERS:
        raise InvalidArgument(f"unknown order {order!r}; one of {', '.join(ORDERS)}",
                              field="order_by")
    return order


def descending(order: str) -> bool:
    return order.startswith("-")


@dataclass(frozen=True)
class ListFilter:
    """What a listed workflow must match; empty tuples and 0 times match anything.
    Time ranges are [min, max): from min inclusive to max exclusive, in ms."""
    statuses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    builds: tuple[str, ...] = ()
    id_prefix: str = ""
    start_min_ms: int = 0
    start_max_ms: int = 0
    close_min_ms: int = 0
    close_max_ms: int = 0

    def matches(self, record: dict) -> bool:
        return ((not self.statuses or record["status"] in self.statuses)
                and (not self.types or record["workflow_type"] in self.types)
                and (not self.builds or record.get("build_id") in self.builds)
                and record["workflow_id"].startswith(self.id_prefix)
                and _within(record["start_time_ms"], self.start_min_ms, self.start_max_ms)
                and _within(record.get("close_time_ms") or 0, self.close_min_ms,
                            self.close_max_ms, unset_matches=not (self.close_min_ms
                                                                  or self.close_max_ms)))

    def fingerprint_text(self) -> str:
        return "|".join([",".join(sorted(self.statuses)), ",".join(sorted(self.types)),
                         ",".join(sorted(self.builds)), self.id_prefix,
                         *(str(t) for t in (self.start_min_ms, self.start_max_ms,
                                            self.close_min_ms, self.close_max_ms))])

    def time_range(self, order: str) -> tuple[int, int]:
        if order.lstrip("-") == "start_time":
            return self.start_min_ms, self.start_max_ms
        return self.close_min_ms, self.close_max_ms


def _within(time_ms: int, min_ms: int, max_ms: int, unset_matches: bool = True) -> bool:
    if not time_ms:
        return unset_matches
    return time_ms >= min_ms and (not max_ms or time_ms < max_ms)


def cursor_key(order: str, workflow_id: str, start_time_ms: int, close_time_ms: int) -> bytes:
    field = order.lstrip("-")
    if field == "workflow_id":
        return workflow_id.encode()
    time_ms = start_time_ms if field == "start_time" else close_time_ms
    return keys.u64(time_ms) + workflow_id.encode()


def list_page(txn: Txn, *, order: str, after: bytes, flt: ListFilter, page_size: int,
              scan_max: int, bytes_max: int | None = None) -> dict:
    """Current runs matching `flt` that come after cursor key `after` (b"": from the
    start) in `order`. Returns {"items": [record], "resume_after": cursor key or None,
    "exhausted": bool}: every match up to resume_after (in order) was returned. At most
    page_size items and, past the first, bytes_max of them (listed_bytes)."""
    items: list[dict] = []
    scanned, page_bytes = 0, 0
    last: bytes | None = None
    for cursor, record in _candidates(txn, order, after, flt):
        if scanned >= scan_max or len(items) >= page_size:
            return {"items": items, "resume_after": last, "exhausted": False}
        matched = record is not None and flt.matches(record)
        if matched and bytes_max is not None:
            page_bytes += listed_bytes(record)
            if items and page_bytes > bytes_max:  # this one starts the next page
                return {"items": items, "resume_after": last, "exhausted": False}
        scanned += 1
        last = cursor
        if matched:
            items.append(record)
    return {"items": items, "resume_after": last, "exhausted": True}


LISTED_ITEM_BYTES = 1024  # a listed run's ids, type, times and statuses, over-counted


def listed_bytes(record: dict) -> int:
    """What a run takes in a ListWorkflows answer: its result and failure, and the rest."""
    failure = record.get("failure")
    return (len(record.get("result") or b"") + LISTED_ITEM_BYTES
            + (len(str(failure)) if failure else 0))


def _candidates(txn: Txn, order: str, after: bytes, flt: ListFilter):
    """(cursor key, record or None) in order from after, within the order's own range."""
    if order.lstrip("-") == "workflow_id":
        prefix = flt.id_prefix.encode()
        if descending(order):
            rows = txn.scan_reverse(keys.WORKFLOWS, prefix=prefix, before=after or None)
        else:
            rows = txn.scan(keys.WORKFLOWS, prefix=prefix, start=after + b"\x00" if after else b"")
        for key, raw in rows:
            yield key, codec.unpack(raw)
        return
    field = _FIELDS[order.lstrip("-")]
    min_ms, max_ms = flt.time_range(order)
    if descending(order):
        upper = field + after if after else (field + keys.u64(max_ms) if max_ms else None)
        rows = txn.scan_reverse(keys.WORKFLOWS_BY_TIME, prefix=field, before=upper)
    else:
        start = field + after + b"\x00" if after else field + keys.u64(min_ms)
        rows = txn.scan(keys.WORKFLOWS_BY_TIME, prefix=field, start=start)
    for key, _ in rows:
        time_ms, workflow_id = keys.by_time_parts(key)
        if time_ms < min_ms if descending(order) else (max_ms and time_ms >= max_ms):
            return  # past the filter's time range: nothing further can match
        raw = txn.get(keys.WORKFLOWS, keys.workflow_key(workflow_id))
        yield key[1:], codec.unpack(raw) if raw is not None else None
