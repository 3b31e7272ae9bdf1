"""Frames on the supervisor ⇄ worker pipes: a 4-byte big-endian length, then a msgpack map.

    frame = encode_frame({"op": "ready", ...})          # bytes, header included
    msg = await read_frame(reader)                      # None at a clean end of stream
    await write_frame(writer, msg)
    reader, writer = await open_pipe_streams(read_fd, write_fd)   # the worker's side

A frame over FRAME_BYTES_MAX is refused on both ends with FrameError: the sender never
writes it, and a reader that sees such a length stops (the stream is out of sync or the
peer is broken; nothing after it can be trusted).
"""

from __future__ import annotations

import asyncio
import os
import struct

from coda.errors import CodaError
from coda.flow import limits
from coda.storage import codec

HEADER = struct.Struct(">I")
FRAME_BYTES_MAX = 64 * limits.MIB
# The largest message: a workflow task whose history came in one gRPC Dispatch.
assert FRAME_BYTES_MAX > limits.grpc_message_bytes_max
assert FRAME_BYTES_MAX < 2 ** (8 * HEADER.size)
# StreamReader buffer: large enough that a big frame is not read in a stop/go of tiny chunks.
STREAM_LIMIT_BYTES = 1 * limits.MIB


# A corked writer flushes at the end of the loop turn, or at once past this many bytes.
CORK_BYTES_MAX = 256 * limits.KIB


class CorkedWriter:
    """Frames for one pipe, written together at the end of the event loop's turn.

    The frames of one dispatch message (tens of items), or of tasks that finish in the
    same turn, cost one write(2) and wake the reader once, not once each
    (`StreamWriter.write` was 15 % of a supervisor's samples under W-seq, 8 % of a
    worker's). No added wait: the flush is a callback of the turn that wrote first.
    `drain` waits for the pipe as StreamWriter's does (what is corked is at most
    CORK_BYTES_MAX); `flush` before anything that ends the process or the pipe."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._parts: list[bytes] = []
        self._bytes = 0
        self._flush_due = False

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._bytes += len(data)
        if self._bytes >= CORK_BYTES_MAX:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_at_end_of_turn)

    def _flush_at_end_of_turn(self) -> None:
        self._flush_due = False
        self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._bytes = 0
        self.writer.write(data)

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.flush()
        self.writer.close()

    async def drain(self) -> None:
        await self.writer.drain()


class FrameError(CodaError):
    """A frame that can't be sent or read: too large, truncated, not a msgpack map."""


def encode_frame(msg: dict) -> bytes:
    try:
        body = codec.pack(msg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise FrameError(f"frame {msg.get('op')!r} can't be encoded as msgpack: {exc}") from None
    if len(body) > FRAME_BYTES_MAX:
        raise FrameError(f"frame {msg.get('op')!r} is {len(body)} bytes, over the limit of "
                         f"{FRAME_BYTES_MAX} bytes", size_bytes=len(body),
                         limit_bytes=FRAME_BYTES_MAX)
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict:
    try:
        msg = codec.unpack(body)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise FrameError(f"frame is not valid msgpack: {str(exc) or type(exc).__name__}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise FrameError(f"frame is not a map with an 'op': {type(msg).__name__}")
    return msg


async def read_frame(reader: asyncio.StreamReader) -> dict | None:
    """The next message; None when the stream ends cleanly between frames."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError(f"stream ended inside a frame header ({len(exc.partial)} bytes)") from None
    (length,) = HEADER.unpack(header)
    if length > FRAME_BYTES_MAX:
        raise FrameError(f"incoming frame of {length} bytes is over the limit of "
                         f"{FRAME_BYTES_MAX} bytes", size_bytes=length, limit_bytes=FRAME_BYTES_MAX)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"stream ended inside a frame: {len(exc.partial)} of {length} "
                         "bytes") from None
    return decode_body(body)


async def write_frame(writer: asyncio.StreamWriter, msg: dict) -> None:
    writer.write(encode_frame(msg))
    await writer.drain()


async def open_pipe_streams(read_fd: int, write_fd: int):
    """asyncio streams over two pipe fds (the worker's channel); takes ownership of both."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(read_fd, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer
