"""ListWorkflows across shards: page tokens and the exact merge of per-shard pages.

Every shard scans the same key space (workflow ids) in order. A shard answers with its
matches after the cursor, where it stopped (resume_after) and whether it reached the end.
All matches <= resume_after of a shard were returned, so the merged page may hold only
ids <= the smallest resume_after among shards that did not reach the end; cut there (and
at page_size), and the next cursor is the last id emitted or that bound. One cursor for
all shards: pages are complete, ordered and duplicate-free while workflows come and go.
"""

from __future__ import annotations

import base64
import hashlib

from coda.errors import InvalidArgument
from coda.flow import limits
from coda.storage import codec

TOKEN_VERSION = 1


def filter_fingerprint(statuses, types, builds=()) -> str:
    text = "|".join(sorted(statuses)) + "#" + "|".join(sorted(types))
    if builds:
        text += "@" + "|".join(sorted(builds))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def encode_token(after: str, fingerprint: str) -> bytes:
    return base64.urlsafe_b64encode(codec.pack([TOKEN_VERSION, after, fingerprint]))


def decode_token(token: bytes, fingerprint: str) -> str:
    """The cursor in a page token; empty token: from the start."""
    if not token:
        return ""
    if len(token) > limits.page_token_bytes_max:
        raise InvalidArgument("page_token is too long", field="page_token")
    try:
        version, after, expected = codec.unpack(base64.urlsafe_b64decode(token))
    except Exception:
        raise InvalidArgument("page_token is malformed; pass back the token a previous "
                              "ListWorkflows returned", field="page_token") from None
    if version != TOKEN_VERSION or not isinstance(after, str):
        raise InvalidArgument("page_token is from an incompatible version", field="page_token")
    if expected != fingerprint:
        raise InvalidArgument("page_token was issued for different filters", field="page_token")
    return after


def merge(shard_pages: list[dict], page_size: int,
          key=lambda item: item["workflow_id"]) -> tuple[list, str | None]:
    """Merge per-shard pages ({items, resume_after, exhausted}) keyed by a string (an id);
    returns (items, next_after). next_after is None when every shard is exhausted and
    all matches were emitted."""
    pages = [dict(p, resume_after=p["resume_after"].encode()
                  if p["resume_after"] is not None else None) for p in shard_pages]
    items, after = merge_ordered(pages, page_size, key=lambda item: key(item).encode())
    return items, after.decode() if after is not None else None


def merge_ordered(shard_pages: list[dict], page_size: int, key,
                  descending: bool = False, size_of=None,
                  bytes_max: int | None = None) -> tuple[list, bytes | None]:
    """The same over byte cursor keys (`key(item)`), ascending or descending: the merged
    page holds only items no further than the nearest resume_after of a shard that
    did not reach its end; and, given `size_of` and `bytes_max`, no more items than fit
    in bytes_max (at least one)."""
    bounds = [p["resume_after"] for p in shard_pages if not p["exhausted"]]
    bound = (max(bounds) if descending else min(bounds)) if bounds else None
    items = sorted((item for p in shard_pages for item in p["items"]), key=key,
                   reverse=descending)
    if bound is not None:
        items = [item for item in items if (key(item) >= bound if descending
                                            else key(item) <= bound)]
    if size_of is not None and bytes_max is not None:
        total = 0
        for i, item in enumerate(items):
            total += size_of(item)
            if i and total > bytes_max:
                page_size = min(page_size, i)
                break
    if len(items) > page_size:
        items = items[:page_size]
        return items, key(items[-1])
    return items, bound


WORKFLOW_TOKEN_VERSION = 2


def encode_cursor(order: str, after: bytes, fingerprint: str) -> bytes:
    """A ListWorkflows page token: the order, the cursor key, the filters' fingerprint."""
    return base64.urlsafe_b64encode(codec.pack([WORKFLOW_TOKEN_VERSION, order, after,
                                                fingerprint]))


def decode_cursor(token: bytes, order: str, fingerprint: str) -> bytes:
    """The cursor key in a ListWorkflows page token; empty token: from the start."""
    if not token:
        return b""
    if len(token) > limits.page_token_bytes_max:
        raise InvalidArgument("page_token is too long", field="page_token")
    try:
        version, token_order, after, expected = codec.unpack(base64.urlsafe_b64decode(token))
    except Exception:
        raise InvalidArgument("page_token is malformed; pass back the token a previous "
                              "ListWorkflows returned", field="page_token") from None
    if version != WORKFLOW_TOKEN_VERSION or not isinstance(after, bytes):
        raise InvalidArgument("page_token is from an incompatible version", field="page_token")
    if token_order != order or expected != fingerprint:
        raise InvalidArgument("page_token was issued for a different order or filters",
                              field="page_token")
    return after
