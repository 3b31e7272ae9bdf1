"""msgpack codecs for stored records and payloads.

One place decides the msgpack options so every record round-trips the same way on every
replica: str stays str, bytes stay bytes, maps keep insertion order, tuples become lists.
"""

from __future__ import annotations

import msgpack

from coda.errors import PayloadError


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_payload(value, *, what: str, limit_bytes: int) -> bytes:
    """Encode a user payload, refusing what msgpack can't carry or what is too large."""
    try:
        data = pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"{what} can't be encoded as msgpack: {exc}", what=what) from None
    if len(data) > limit_bytes:
        raise PayloadError(
            f"{what} is {len(data)} bytes encoded, over the limit of {limit_bytes} bytes",
            what=what, size_bytes=len(data), limit_bytes=limit_bytes)
    return data


def pack_array_of_packed(packed: list[bytes]) -> bytes:
    """The msgpack array of values already packed, made without decoding them: equal to
    pack([unpack(p) for p in packed]) when each was packed by `pack` (a history's events
    go out as stored)."""
    n = len(packed)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(packed)


def array_length(data: bytes) -> int:
    """The length of the msgpack array `data` holds, read from its header only (0 if it
    is not an array): a cheap estimate before the whole payload is decoded."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(data)
    try:
        return unpacker.read_array_header()
    except Exception:  # not an array, or garbage: decode_payload will say what is wrong
        return 0


def decode_payload(data: bytes, *, what: str):
    """Decode a payload received from outside; malformed bytes raise PayloadError."""
    try:
        return unpack(data)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        # Some carry no message (FormatError for a reserved byte): name the type then.
        reason = str(exc) or type(exc).__name__
        raise PayloadError(f"{what} is not valid msgpack: {reason}", what=what) from None
