"""Frames of the supervisor ⇄ worker pipes: 4-byte big-endian length, then a msgpack map."""

import asyncio
import os
import struct

import pytest

from coda.storage import codec
from coda.supervisor import frames


def read_all(data: bytes, *, eof: bool = True, chunk: int | None = None) -> list:
    """Every frame in `data` (fed in chunks), then what the reader says at the end."""
    async def run():
        reader = asyncio.StreamReader()
        step = chunk or max(len(data), 1)
        for i in range(0, len(data), step):
            reader.feed_data(data[i:i + step])
        if eof:
            reader.feed_eof()
        out = []
        while (msg := await frames.read_frame(reader)) is not None:
            out.append(msg)
        return out
    return asyncio.run(run())


def test_a_frame_is_a_big_endian_length_then_msgpack():
    msg = {"op": "done", "id": "t-1", "result": b"\x93\x01\x02\x03"}
    frame = frames.encode_frame(msg)
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert codec.unpack(frame[4:]) == msg


def test_frames_round_trip_whatever_the_chunking():
    msgs = [{"op": "ready", "pid": 7, "workflow_types": ["a"], "task_types": []},
            {"op": "done", "id": "x", "result": b"\x00" * 100_000},
            {"op": "heartbeat", "id": "y", "details": None}]
    data = b"".join(frames.encode_frame(m) for m in msgs)
    assert read_all(data) == msgs
    assert read_all(data, chunk=3) == msgs


def test_end_of_stream_between_frames_is_none_and_inside_one_is_an_error():
    frame = frames.encode_frame({"op": "stop"})
    assert read_all(b"") == []
    with pytest.raises(frames.FrameError, match="inside a frame header"):
        read_all(frame[:2])
    with pytest.raises(frames.FrameError, match="inside a frame"):
        read_all(frame + frame[:-1])


def test_an_incoming_length_over_the_limit_is_refused_before_reading_the_body():
    header = struct.pack(">I", frames.FRAME_BYTES_MAX + 1)
    with pytest.raises(frames.FrameError, match="over the limit") as info:
        read_all(header, eof=False)  # no body and no EOF: it must not wait for one
    assert info.value.details["limit_bytes"] == frames.FRAME_BYTES_MAX


def test_an_outgoing_frame_over_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(frames, "FRAME_BYTES_MAX", 1000)
    frames.encode_frame({"op": "done", "result": b"x" * 900})
    with pytest.raises(frames.FrameError, match="'done' is 1.* bytes, over the limit of 1000"):
        frames.encode_frame({"op": "done", "result": b"x" * 1000})


def test_what_msgpack_cannot_carry_is_a_frame_error():
    with pytest.raises(frames.FrameError, match="can't be encoded"):
        frames.encode_frame({"op": "done", "result": object()})


@pytest.mark.parametrize("body", [codec.pack([1, 2]), codec.pack({"id": "no op"}), b"\xc1"])
def test_a_body_that_is_not_a_map_with_an_op_is_a_frame_error(body):
    with pytest.raises(frames.FrameError):
        read_all(struct.pack(">I", len(body)) + body)


def test_pipe_streams_carry_frames_both_ways():
    async def run():
        a_read, b_write = os.pipe()
        b_read, a_write = os.pipe()
        a_reader, a_writer = await frames.open_pipe_streams(a_read, a_write)
        b_reader, b_writer = await frames.open_pipe_streams(b_read, b_write)
        big = {"op": "workflow_task", "id": "w", "history": [{"event_id": i} for i in range(50_000)]}
        await asyncio.gather(frames.write_frame(a_writer, big),
                             frames.write_frame(b_writer, {"op": "ready"}))
        got_b = await frames.read_frame(b_reader)
        got_a = await frames.read_frame(a_reader)
        a_writer.close()
        assert await frames.read_frame(b_reader) is None  # closed between frames
        b_writer.close()
        return got_a, got_b
    got_a, got_b = asyncio.run(run())
    assert got_a == {"op": "ready"}
    assert got_b["id"] == "w" and len(got_b["history"]) == 50_000


def test_frames_written_in_one_turn_reach_a_real_pipe_in_one_write():
    """CorkedWriter over a real pipe: three frames of one loop turn are one write(2)
    (counted by the transport's writes), arrive whole and in order; a frame past
    CORK_BYTES_MAX goes at once; close flushes what is corked."""
    async def run():
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        reader, writer = await frames.open_pipe_streams(read_fd, write_fd)
        writes = []
        real_write = writer.transport.write
        writer.transport.write = lambda data: (writes.append(len(data)), real_write(data))
        corked = frames.CorkedWriter(writer)
        msgs = [{"op": "done", "id": f"t-{i}"} for i in range(3)]
        for msg in msgs:
            corked.write(frames.encode_frame(msg))
        assert writes == []  # nothing yet: the turn is not over
        got = [await frames.read_frame(reader) for _ in msgs]
        assert got == msgs and len(writes) == 1
        big = {"op": "done", "id": "big", "result": b"x" * frames.CORK_BYTES_MAX}
        corked.write(frames.encode_frame(big))
        assert len(writes) == 2  # past the cork's bound: written at once
        assert await frames.read_frame(reader) == big
        corked.write(frames.encode_frame({"op": "stop"}))
        corked.close()
        assert await frames.read_frame(reader) == {"op": "stop"}
        assert await frames.read_frame(reader) is None  # closed after the flush
        await loop.shutdown_asyncgens()
    asyncio.run(run())
