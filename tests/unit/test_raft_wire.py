"""Raft frames sealed with AES-GCM (flow.raft_wire): what opens, what is refused."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from pysyncobj import pickle as raft_pickle

from coda.flow import raft_wire
from coda.flow.raft_wire import RaftCipher, RaftConnection

SECRET = "a-cluster-secret-of-24ch"


class _Poller:
    def unsubscribe(self, fd):
        pass


def test_a_sealed_frame_opens_under_the_same_secret_only():
    frame = RaftCipher(SECRET).seal(b"append entries", 41)
    assert RaftCipher(SECRET).open(frame) == b"append entries"  # another cipher, same key
    assert RaftCipher.timestamp_of(frame) == 41
    assert b"append entries" not in frame  # encrypted, not only signed
    with pytest.raises(InvalidTag):
        RaftCipher("another-secret-of-24-chx").open(frame)


@pytest.mark.parametrize("where", [0, 7, 8, 19, 20, -1])
def test_a_changed_byte_anywhere_is_refused(where):
    cipher = RaftCipher(SECRET)
    frame = bytearray(cipher.seal(b"x" * 100, 5))
    frame[where] ^= 0x01  # the timestamp, the nonce, the ciphertext, the tag
    with pytest.raises(InvalidTag):
        cipher.open(bytes(frame))


def test_short_frames_are_refused():
    cipher = RaftCipher(SECRET)
    for frame in (b"", b"\x00" * 35):
        with pytest.raises(ValueError, match="too short"):
            cipher.open(frame)
        with pytest.raises(ValueError, match="too short"):
            RaftCipher.timestamp_of(frame)


def test_nonces_never_repeat_and_the_prefix_changes_when_the_counter_wraps():
    cipher = RaftCipher(SECRET)
    seen = {cipher._nonce() for _ in range(1000)}
    assert len(seen) == 1000
    prefix = cipher._prefix
    cipher._counter = raft_wire._COUNTER_LIMIT
    after = cipher._nonce()
    assert cipher._prefix != prefix and after[-4:] == b"\x00\x00\x00\x00"
    assert after not in seen


def test_one_cipher_per_secret_per_process():
    assert raft_wire.cipher_for(SECRET) is raft_wire.cipher_for(SECRET)
    assert raft_wire.cipher_for(SECRET) is not raft_wire.cipher_for(SECRET + "!")


def _connection(cipher, rand_key=None) -> RaftConnection:
    conn = RaftConnection(poller=_Poller())
    conn.encryptor = cipher
    conn.recvRandKey = rand_key
    return conn


def _frame(cipher, message, timestamp: int) -> bytes:
    sealed = cipher.seal(raft_pickle.dumps(message), timestamp)
    return raft_wire._LENGTH.pack(len(sealed)) + sealed


def _feed(conn, data: bytes):
    conn._TcpConnection__readBuffer += data
    return conn._TcpConnection__processParseMessage()


def test_the_connection_reads_frames_in_order_and_keeps_partial_ones():
    cipher = RaftCipher(SECRET)
    conn = _connection(cipher, rand_key=b"k" * 32)
    one = _frame(cipher, (b"k" * 32, {"type": "append", "n": 1}), 10)
    two = _frame(cipher, (b"k" * 32, {"type": "append", "n": 2}), 10)
    assert _feed(conn, one + two[:9]) == {"type": "append", "n": 1}
    assert conn._TcpConnection__processParseMessage() is None  # the second is incomplete
    assert _feed(conn, two[9:]) == {"type": "append", "n": 2}
    assert conn._TcpConnection__readBuffer == b""


@pytest.mark.parametrize("case", ["wrong secret", "older timestamp", "other connection's key",
                                  "negative length"])
def test_the_connection_drops_a_frame_it_must_not_trust(case):
    cipher = RaftCipher(SECRET)
    conn = _connection(cipher, rand_key=b"k" * 32)
    assert _feed(conn, _frame(cipher, (b"k" * 32, "first"), 20)) == "first"
    bad = {"wrong secret": _frame(RaftCipher("another-secret-of-24-chx"), (b"k" * 32, "m"), 20),
           "older timestamp": _frame(cipher, (b"k" * 32, "replayed"), 19),
           "other connection's key": _frame(cipher, (b"q" * 32, "m"), 20),
           "negative length": raft_wire._LENGTH.pack(-5) + b"\x00" * 40}[case]
    assert _feed(conn, bad) is None
    # Dropped: the connection is reset (buffers emptied), as pysyncobj does with Fernet.
    assert conn._TcpConnection__readBuffer == b"" and conn.recvRandKey is None


def test_without_a_raft_cipher_the_connection_keeps_pysyncobjs_framing():
    import struct
    import zlib
    conn = RaftConnection(poller=_Poller())
    data = zlib.compress(raft_pickle.dumps({"type": "ping"}), 3)
    assert _feed(conn, struct.pack("i", len(data)) + data) == {"type": "ping"}


class _RecordingPoller(_Poller):
    def __init__(self):
        self.masks: list[int] = []

    def subscribe(self, fd, callback, mask):
        self.masks.append(mask)


def test_what_the_socket_did_not_take_is_sent_when_it_becomes_writable():
    """pysyncobj watched "writable" only until a connection was up: the rest of a send
    the socket buffer could not take waited for the next send on that connection."""
    import socket

    from pysyncobj.poller import POLL_EVENT_TYPE
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    poller = _RecordingPoller()
    conn = RaftConnection(poller=poller, socket=ours)
    conn.encryptor = RaftCipher(SECRET)
    conn._TcpConnection__processConnection(ours.fileno(), POLL_EVENT_TYPE.WRITE)
    assert not poller.masks[-1] & POLL_EVENT_TYPE.WRITE  # connected, nothing to send
    conn.send({"type": "append", "data": b"x" * 2_000_000})
    assert conn._TcpConnection__writeBuffer  # the socket took part of it
    assert poller.masks[-1] & POLL_EVENT_TYPE.WRITE  # and the rest waits for writable
    received = bytearray()
    peer.settimeout(5)
    while conn._TcpConnection__writeBuffer:
        received += peer.recv(1 << 20)
        conn._TcpConnection__processConnection(ours.fileno(), POLL_EVENT_TYPE.WRITE)
    assert not poller.masks[-1] & POLL_EVENT_TYPE.WRITE  # all sent: watch dropped
    reader = _connection(RaftCipher(SECRET))
    peer.setblocking(False)
    try:
        while True:
            received += peer.recv(1 << 20)
    except BlockingIOError:
        pass
    assert _feed(reader, bytes(received)) == {"type": "append", "data": b"x" * 2_000_000}
    ours.close()
    peer.close()


def test_frames_pickle_bytes_as_bytes_not_as_pysyncobjs_latin1_strings():
    """pysyncobj pickles with protocol 2, where bytes become a latin-1 str re-encoded on
    load: a message of write-set entries grew ~1.5x and took ~50x longer to (un)pickle.
    A frame's payload is protocol 5, as long as its bytes, and reads back as sent."""
    import os
    import pickle
    import socket

    from pysyncobj.poller import POLL_EVENT_TYPE
    entries = [(b"\x00" + os.urandom(4000), index, 3) for index in range(10)]
    message = {"type": "append_entries", "entries": entries}
    ours, peer = socket.socketpair()
    conn = RaftConnection(poller=_RecordingPoller(), socket=ours)
    cipher = RaftCipher(SECRET)
    conn.encryptor = cipher
    conn._TcpConnection__processConnection(ours.fileno(), POLL_EVENT_TYPE.WRITE)
    conn.send(message)
    peer.settimeout(5)
    received = b""
    while len(received) < raft_wire._LENGTH.size or \
            len(received) < raft_wire._LENGTH.size + raft_wire._LENGTH.unpack_from(received)[0]:
        received += peer.recv(1 << 20)
    payload = cipher.open(received[raft_wire._LENGTH.size:])
    assert payload[:2] == b"\x80\x05"  # pickle protocol 5
    assert len(payload) < 4000 * 10 * 1.05 < len(raft_pickle.dumps(message))
    assert pickle.loads(payload) == message
    assert _feed(_connection(cipher), received) == message
    ours.close()
    peer.close()
