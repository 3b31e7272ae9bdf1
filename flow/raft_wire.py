"""Raft peer frames: authenticated encryption with AES-GCM, without zlib.

pysyncobj 0.3.17 sends each message as zlib.compress(pickle(message), 3) sealed with
Fernet (AES-128-CBC, HMAC-SHA256, base64). Measured here per message: an append ack
20 us to send and 16 us to read, a 36 KB append of write sets 76 us and 107 us; the
same with one AES-GCM call and no zlib, 1-6 us. Under W-seq that framing was ~8 % of a
leader's profile samples, and four such messages lie on every commit's path.

`RaftCipher` seals a frame as

    [timestamp: 8 bytes, big-endian][nonce: 12 bytes][ciphertext + 16-byte tag]

with the timestamp as associated data, so it is authenticated but readable before
decryption (pysyncobj's receiver refuses a timestamp older than the last one seen on
that connection, as it did with Fernet's). What pysyncobj's transport layers on top is
unchanged: each side of a connection sends a random 32-byte key first, and every later
message carries the peer's key inside the ciphertext, so a frame recorded on one
connection is refused on any other.

The key is AES-256, derived from the cluster secret with PBKDF2-HMAC-SHA256 (100,000
iterations, as pysyncobj's Fernet key was) under a salt of Coda's own. Nonces are never
reused under a key: 8 random bytes chosen per cipher (again after 2**32 frames) and a
4-byte counter. Frames from a node of an earlier release (Fernet) fail to authenticate
and the connection is dropped: this release's Raft traffic does not mix with older
nodes' (docs/operating.md: upgrade with the cluster stopped).

`RaftConnection` is pysyncobj's TcpConnection with this framing; flow.raft_base installs
it for the Raft transport (trap 11). A connection whose encryptor is not a RaftCipher
(pysyncobj used on its own, as the raw bench does) keeps pysyncobj's framing.
"""

from __future__ import annotations

import functools
import os
import pickle
import struct
import threading

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj.monotonic import monotonic as monotonic_s
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import TcpConnection

# pysyncobj pickles with protocol 2, where a bytes object is pickled as a call that
# re-encodes it from a latin-1 str: our entries are bytes (msgpack write sets) inside
# pickled calls inside pickled messages, so each was inflated ~1.5x and (un)pickled in
# ~100 us per 40 KB message instead of ~2 (pysyncobj's dumps and loads were ~9 % of the
# nodes' samples under W-seq). Our frames and entries use protocol 5; pickle.loads reads
# any protocol, so older journal entries still load.
PICKLE_PROTOCOL = 5


def pickle_dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


_SALT = b"coda raft frames, AES-256-GCM, v1"
_KDF_ITERATIONS = 100_000
_TIMESTAMP = struct.Struct(">Q")
_LENGTH = struct.Struct("i")  # pysyncobj's frame length prefix (native int), kept
_NONCE_BYTES = 12
_COUNTER_LIMIT = 2 ** 32
_HEAD_BYTES = _TIMESTAMP.size + _NONCE_BYTES
_TAG_BYTES = 16  # AES-GCM's authentication tag


class RaftCipher:
    """Seals and opens Raft frames under a key derived from the cluster secret.
    Thread-safe: every shard's tick thread of a node may share one."""

    def __init__(self, secret: str | bytes):
        self._aead = AESGCM(_derive_key(secret if isinstance(secret, bytes) else secret.encode()))
        self._lock = threading.Lock()
        self._prefix = os.urandom(_NONCE_BYTES - 4)
        self._counter = 0

    def _nonce(self) -> bytes:
        with self._lock:
            if self._counter == _COUNTER_LIMIT:
                self._prefix, self._counter = os.urandom(_NONCE_BYTES - 4), 0
            counter, self._counter = self._counter, self._counter + 1
            return self._prefix + counter.to_bytes(4, "big")

    def seal(self, plaintext: bytes, timestamp: int) -> bytes:
        stamp = _TIMESTAMP.pack(timestamp)
        nonce = self._nonce()
        return stamp + nonce + self._aead.encrypt(nonce, plaintext, stamp)

    @staticmethod
    def timestamp_of(frame: bytes) -> int:
        _check_length(frame)
        return _TIMESTAMP.unpack_from(frame)[0]

    def open(self, frame: bytes) -> bytes:
        """The plaintext; raises (cryptography's InvalidTag) unless the frame was sealed
        under this key, unaltered, timestamp included."""
        _check_length(frame)
        return self._aead.decrypt(frame[_TIMESTAMP.size:_HEAD_BYTES], frame[_HEAD_BYTES:],
                                  frame[:_TIMESTAMP.size])


def _check_length(frame: bytes) -> None:
    if len(frame) < _HEAD_BYTES + _TAG_BYTES:
        raise ValueError(f"a Raft frame of {len(frame)} bytes is too short "
                         f"(at least {_HEAD_BYTES + _TAG_BYTES})")


@functools.lru_cache(maxsize=4)
def cipher_for(secret: str) -> RaftCipher:
    """One cipher per secret per process: the key derivation (~50 ms) runs once, not
    once per shard."""
    return RaftCipher(secret)


def _derive_key(secret: bytes) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=_SALT,
                     iterations=_KDF_ITERATIONS)
    return kdf.derive(secret)


class RaftConnection(TcpConnection):
    """pysyncobj's TcpConnection, its frames sealed by a RaftCipher (module docstring),
    and sending what the socket did not take at once when it can (below)."""

    def send(self, message):
        cipher = self.encryptor
        if not isinstance(cipher, RaftCipher):
            TcpConnection.send(self, message)
        else:
            if self.sendRandKey:
                message = (self.sendRandKey, message)
            frame = cipher.seal(pickle_dumps(message), int(monotonic_s()))
            self._TcpConnection__writeBuffer += _LENGTH.pack(len(frame)) + frame
            self._TcpConnection__trySendBuffer()
        self._watch_writable()

    def _watch_writable(self) -> None:
        # pysyncobj watches a connection for "writable" only until it connects; a send
        # the socket buffer could not take whole kept its rest until the next send on
        # that connection (a heartbeat, up to append_entries_period_s later): W-fan's
        # appends stalled ~100 ms each time. Its own handler takes over from here: on
        # the writable event it sends the rest and drops the watch once the buffer is
        # empty.
        fileno = self._TcpConnection__fileno
        if self._TcpConnection__writeBuffer and fileno is not None:
            self._TcpConnection__poller.subscribe(
                fileno, self._TcpConnection__processConnection,
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)

    def _TcpConnection__processParseMessage(self):
        cipher = self.encryptor
        if not isinstance(cipher, RaftCipher):
            return TcpConnection._TcpConnection__processParseMessage(self)
        buffer = self._TcpConnection__readBuffer
        if len(buffer) < _LENGTH.size:
            return None
        length = _LENGTH.unpack_from(buffer)[0]
        if length < 0:
            self.disconnect()
            return None
        if len(buffer) - _LENGTH.size < length:
            return None
        frame = buffer[_LENGTH.size:_LENGTH.size + length]
        try:
            timestamp = cipher.timestamp_of(frame)
            if timestamp < self.recvLastTimestamp:
                raise ValueError("a Raft frame older than the last one on this connection")
            message = pickle.loads(cipher.open(frame))
            self.recvLastTimestamp = timestamp
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("a Raft frame of another connection")
        except Exception:
            # A wrong secret, a tampered or replayed frame: drop the connection, as
            # pysyncobj does (its peer reconnects and handshakes again).
            self.disconnect()
            return None
        self._TcpConnection__readBuffer = buffer[_LENGTH.size + length:]
        return message
