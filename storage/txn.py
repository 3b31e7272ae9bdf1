"""The transaction interface the shard state machine writes through.

The state machine sees only this protocol, never LMDB: `env.LmdbTxn` implements it over a
real write transaction. Keys and values are bytes; databases are named by `keys.*`.
"""

from __future__ import annotations

from typing import Iterator, Protocol


class Txn(Protocol):
    def get(self, db: str, key: bytes) -> bytes | None: ...

    def put(self, db: str, key: bytes, value: bytes) -> None: ...

    def delete(self, db: str, key: bytes) -> bool: ...

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Keys >= max(prefix, start) that begin with prefix, in byte order."""
        ...

    def scan_reverse(self, db: str, *, prefix: bytes = b"",
                     before: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Keys that begin with prefix and are < before (None: no bound), last first."""
        ...
