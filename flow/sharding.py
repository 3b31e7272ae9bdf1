"""Which shard owns a workflow (or a global object): a stable hash, never Python's hash().

blake2b of the UTF-8 id, first 8 bytes big-endian, modulo the shard count fixed when the
cluster was created. Stable across processes, versions and machines.
"""

from __future__ import annotations

import hashlib


def stable_hash64(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def shard_for(name: str, shard_count: int) -> int:
    assert shard_count > 0
    return stable_hash64(name) % shard_count
