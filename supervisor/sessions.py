"""Supervisor ⇄ Flow: one `SupervisorSessions.Session` stream per shard leader.

The contract is docs/execution-protocol.md. This module has a pure part (no I/O; time and
randomness are arguments) and the shell that drives the streams:

    CompletionBatcher   one per shard: completions waiting to be sent or acked. A batch is
                        bounded by count (256), bytes, and time (20 ms after the first
                        unsent completion). Unacked completions are resent, with the same
                        request ids, on the next stream, and on the same stream when no
                        answer came within `ack_timeout_s`. Acked and rejected ones are
                        dropped. `full` says the resend buffer reached its bound; the
                        shard then gets no credit, so the buffer holds at most its bound
                        plus the shard's share (items already running when it filled).
    CreditLedger        the slots of every shard: what runs, what Flow may still send, and
                        the slots freed since the last `credit` message (sent as one
                        message per flush; withheld while the shard's resend buffer is full
                        or the supervisor drains).
    Backoff             reconnect delays: 50 ms doubling to 1 s, with jitter.
    ChannelCache        one grpc.aio channel per Flow address.
    ShardMap            `Flow.GetShardMap` from any node, rotating through the addresses.
    ShardSession        one shard's stream, reconnecting for ever: hello → accepted, then
                        dispatches / acks / cancel in, credit / heartbeats / completions out.
                        What to say and what to do with what Flow says is the
                        `SessionHost`'s business (coda.supervisor.supervisor.Supervisor).

Known limitation: the credit split. A supervisor's slots are split evenly across shards,
once, at start-up: each shard's session gets max(1, slots // shard_count) credit. A hot
shard therefore gets only its share even while the other shards are idle, and with more
shards than slots the supervisor grants one slot per shard (more than `slots` in all).
Flow has no cross-shard view of a supervisor's capacity; moving idle shards' credit to
busy ones is future work.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Iterable, Protocol

import grpc

from coda.api import flow_pb2 as pb
from coda.api import flow_pb2_grpc as pb_grpc
from coda.flow import limits

log = logging.getLogger(__name__)

# --- limits (units last) -------------------------------------------------------------------
BATCH_ITEMS_MAX = 256            # completions per `completions` message (the contract)
BATCH_WAIT_S = 0.020             # the longest a completion waits for company (the contract)
# A batch carries at most one command's worth of bytes, so it always fits a gRPC message;
# a single completion is cut to fit this before it is queued (Supervisor._completion).
BATCH_BYTES_MAX = limits.command_bytes_max
RESEND_BUFFER_ITEMS_MAX = 10_000  # unacked completions per shard; past it, no more credit
# Flow answers a completion once its proposal commits or fails; a proposal times out after
# limits.proposal_timeout_s. No answer by then: the ack was lost, send again (the shard
# dedups by request id).
ACK_TIMEOUT_S = limits.proposal_timeout_s + 5.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
SHARD_MAP_TIMEOUT_S = 2.0
# register_supervisor is a Raft commit: it can take up to a proposal timeout.
ACCEPT_TIMEOUT_S = limits.proposal_timeout_s + 5.0
LEASE_MS_FALLBACK = 10_000       # if Flow's `accepted` names no lease
# gRPC keepalive finds a leader that vanished without closing the connection (partition,
# power loss): the stream fails and the session reconnects. A gRPC server with default
# settings answers a third ping with no data received in between with GOAWAY
# "too_many_pings" (measured: data every 25 s with 10 s pings is fine, every 40 s is not),
# so heartbeats (data) go at least every 2 pings whatever the lease.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MIN_S = 0.05
FAILURES_LOGGED_EVERY = 30       # reconnect failures in a row: log one in this many at INFO
HEARTBEAT_INTERVAL_MAX_S = 2 * KEEPALIVE_TIME_MS / 1000

assert BATCH_BYTES_MAX < limits.grpc_message_bytes_max
assert BATCH_ITEMS_MAX <= RESEND_BUFFER_ITEMS_MAX
assert BACKOFF_INITIAL_S <= BACKOFF_MAX_S
assert HEARTBEAT_INTERVAL_MIN_S < HEARTBEAT_INTERVAL_MAX_S
assert ACK_TIMEOUT_S > limits.proposal_timeout_s


# ===========================================================================================
# Pure bookkeeping
# ===========================================================================================

@dataclass
class _Pending:
    completion: object          # anything with .request_id (a pb.Completion in production)
    size_bytes: int
    queued_s: float             # when it (last) became unsent; -inf: send at once
    sent_s: float | None = None  # when sent on the current stream; None while unsent


class CompletionBatcher:
    """Completions of one shard, from the worker's answer until Flow's ack or rejection.

    Every completion is either unsent (queued, in order) or sent and waiting for its
    answer. `take_batch` hands out the next batch; `requeue_unacked` (a new stream) makes
    every unanswered completion unsent again, due at once, in the original order.
    """

    def __init__(self, *, batch_items_max: int = BATCH_ITEMS_MAX,
                 batch_wait_s: float = BATCH_WAIT_S, batch_bytes_max: int = BATCH_BYTES_MAX,
                 buffer_items_max: int = RESEND_BUFFER_ITEMS_MAX,
                 ack_timeout_s: float = ACK_TIMEOUT_S):
        assert batch_items_max >= 1 and batch_bytes_max >= 1 and buffer_items_max >= 1
        self.batch_items_max = batch_items_max
        self.batch_wait_s = batch_wait_s
        self.batch_bytes_max = batch_bytes_max
        self.buffer_items_max = buffer_items_max
        self.ack_timeout_s = ack_timeout_s
        self._pending: dict[str, _Pending] = {}     # request id -> entry, in arrival order
        self._unsent: collections.deque[str] = collections.deque()
        self._unsent_bytes = 0
        # (sent_s, request id) in send order, to find answers overdue in O(1) amortised.
        self._sent: collections.deque[tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        """Completions not yet acked or rejected (sent or not)."""
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.buffer_items_max

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def add(self, completion, now_s: float, size_bytes: int | None = None) -> None:
        request_id = completion.request_id
        assert request_id and request_id not in self._pending, request_id
        if size_bytes is None:
            size_bytes = completion.ByteSize()
        self._pending[request_id] = _Pending(completion, size_bytes, now_s)
        self._unsent.append(request_id)
        self._unsent_bytes += size_bytes

    def pending(self) -> Iterable:
        """Every completion not yet answered, in arrival order (a hello's `running` list)."""
        return [entry.completion for entry in self._pending.values()]

    def due(self, now_s: float) -> bool:
        due_s = self.next_due_s()
        return due_s is not None and now_s >= due_s

    def next_due_s(self) -> float | None:
        """When `due` turns true without anything being added (None: nothing to send).

        Adaptive (Nagle): with nothing sent and unanswered, a completion goes at once, so
        an idle supervisor adds no latency; while a batch is in flight, the next one
        gathers company for up to batch_wait_s (or until it is full)."""
        if not self._unsent:
            return None
        if (len(self._unsent) >= self.batch_items_max
                or self._unsent_bytes >= self.batch_bytes_max
                or len(self._pending) == len(self._unsent)):
            return -math.inf
        return self._pending[self._unsent[0]].queued_s + self.batch_wait_s

    def take_batch(self, now_s: float) -> list:
        """The next batch, in order, marked sent at now_s (whether due or not: a flush)."""
        batch, batch_bytes = [], 0
        while self._unsent and len(batch) < self.batch_items_max:
            entry = self._pending[self._unsent[0]]
            if batch and batch_bytes + entry.size_bytes > self.batch_bytes_max:
                break
            request_id = self._unsent.popleft()
            self._unsent_bytes -= entry.size_bytes
            entry.sent_s = now_s
            self._sent.append((now_s, request_id))
            batch.append(entry.completion)
            batch_bytes += entry.size_bytes
        return batch

    def ack(self, request_ids: Iterable[str]) -> list:
        """Drop committed completions; returns those that were known (repeats are harmless)."""
        return [completion for completion, _ in self.ack_timed(request_ids)]

    def ack_timed(self, request_ids: Iterable[str]) -> list[tuple]:
        """Like ack, as (completion, when it was last sent or None) pairs: the send time
        gives the ack latency (metrics)."""
        dropped = (self._drop_entry(r) for r in request_ids)
        return [(entry.completion, entry.sent_s) for entry in dropped if entry is not None]

    def reject(self, request_ids: Iterable[str]) -> list:
        """Drop rejected completions (final: never resent); returns those that were known."""
        return self.ack(request_ids)

    def requeue_unacked(self) -> int:
        """A new stream: every unanswered completion is sent again, at once, in order.
        Returns how many of them had been sent before (the rest never left)."""
        resent = sum(1 for entry in self._pending.values() if entry.sent_s is not None)
        self._unsent = collections.deque(self._pending)
        self._unsent_bytes = 0
        self._sent.clear()
        for entry in self._pending.values():
            entry.sent_s = None
            entry.queued_s = -math.inf
            self._unsent_bytes += entry.size_bytes
        return resent

    def requeue_stale(self, now_s: float) -> int:
        """Completions sent over `ack_timeout_s` ago and still unanswered go out again."""
        count = 0
        while self._sent and self._sent[0][0] + self.ack_timeout_s <= now_s:
            sent_s, request_id = self._sent.popleft()
            entry = self._pending.get(request_id)
            if entry is None or entry.sent_s != sent_s:
                continue  # answered, or sent again since
            entry.sent_s = None
            entry.queued_s = -math.inf
            self._unsent.append(request_id)
            self._unsent_bytes += entry.size_bytes
            count += 1
        return count

    def _drop_entry(self, request_id: str) -> _Pending | None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return None
        if entry.sent_s is None:  # answered while queued for a resend: rare, O(n) is fine
            self._unsent.remove(request_id)
            self._unsent_bytes -= entry.size_bytes
        return entry


class CreditLedger:
    """The slots of every shard session.

    Per shard: `running` items occupy slots; `outstanding` is the credit Flow holds (granted
    minus dispatches received); `owed` slots were freed and not yet granted. A new session
    starts from scratch: Flow forgets the old credit, so what it may send is the shard's
    share less what still runs here.
    """

    def __init__(self, slots: int, shard_count: int):
        assert slots >= 1 and shard_count >= 1
        self.shard_count = shard_count
        self.share = max(1, slots // shard_count)
        self.running = [0] * shard_count
        self.outstanding = [0] * shard_count
        self.owed = [0] * shard_count
        self.stopped = False

    def on_hello(self, shard: int, *, blocked: bool = False) -> int:
        """The `slots` of a new session's hello."""
        self.outstanding[shard] = 0
        self.owed[shard] = max(0, self.share - self.running[shard])
        return self.take_grant(shard, blocked=blocked)

    def on_dispatch(self, shard: int) -> bool:
        """An item arrived; False if Flow had no credit left for it (a Flow bug: run it)."""
        self.running[shard] += 1
        if self.outstanding[shard] == 0:
            return False
        self.outstanding[shard] -= 1
        return True

    def on_finish(self, shard: int) -> None:
        assert self.running[shard] > 0, shard
        self.running[shard] -= 1
        self.owed[shard] += 1

    def take_grant(self, shard: int, *, blocked: bool = False) -> int:
        """Slots to grant now, in one `credit` message (0: send none). While `blocked` (the
        shard's resend buffer is full) or stopped (draining), freed slots stay owed."""
        if self.stopped or blocked:
            return 0
        grant, self.owed[shard] = self.owed[shard], 0
        self.outstanding[shard] += grant
        return grant

    def stop(self) -> None:
        """Draining: grant nothing more."""
        self.stopped = True


class Backoff:
    """50 ms doubling to 1 s; each delay drawn from [d/2, d] so sessions don't move in step."""

    def __init__(self, rng: random.Random, initial_s: float = BACKOFF_INITIAL_S,
                 max_s: float = BACKOFF_MAX_S):
        self._rng = rng
        self._initial_s = initial_s
        self._max_s = max_s
        self._current_s = initial_s

    def next_s(self) -> float:
        delay = self._current_s * (0.5 + 0.5 * self._rng.random())
        self._current_s = min(self._current_s * 2, self._max_s)
        return delay

    def reset(self) -> None:
        self._current_s = self._initial_s


# ===========================================================================================
# The shell: channels, the shard map, one session per shard
# ===========================================================================================

def channel_options() -> list:
    return [("grpc.max_send_message_length", limits.grpc_message_bytes_max),
            ("grpc.max_receive_message_length", limits.grpc_message_bytes_max),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.enable_retries", 0)]


class ChannelCache:
    def __init__(self):
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address, options=channel_options())
        return self._channels[address]

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class ShardMap:
    """shard -> leader address, fetched from any node; sessions share one fetch."""

    def __init__(self, addresses: list[str], channels: ChannelCache, rng: random.Random):
        assert addresses
        self.addresses = list(addresses)
        self.channels = channels
        self.shard_count: int | None = None
        self.leaders: list[str] = []
        self.fetched_s = -math.inf
        self._next = rng.randrange(len(self.addresses))
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """One pass over the addresses, starting where the last success was."""
        for _ in range(len(self.addresses)):
            address = self.addresses[self._next]
            try:
                answer = await pb_grpc.FlowStub(self.channels.get(address)).GetShardMap(
                    pb.GetShardMapRequest(), timeout=SHARD_MAP_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                log.debug("GetShardMap from %s failed: %s", address, exc.code().name)
                self._next = (self._next + 1) % len(self.addresses)
                continue
            if self.shard_count is not None and answer.shard_count != self.shard_count:
                # Fixed when the cluster was created: a different count is another cluster.
                log.error("%s reports %d shards, not %d: ignored", address,
                          answer.shard_count, self.shard_count)
                self._next = (self._next + 1) % len(self.addresses)
                continue
            self.shard_count = answer.shard_count
            self.leaders = list(answer.leaders)
            self.fetched_s = time.monotonic()
            return True
        return False

    async def leader(self, shard: int, *, newer_than_s: float) -> str | None:
        """The shard's leader from a map fetched after `newer_than_s` (fetch if needed)."""
        async with self._lock:
            if self.fetched_s <= newer_than_s:
                await self.refresh()
        if shard < len(self.leaders):
            return self.leaders[shard] or None
        return None


class SessionHost(Protocol):
    """What a ShardSession asks of the supervisor (all called on the event loop)."""

    def hello(self, shard: int) -> pb.SupervisorHello: ...
    def on_accepted(self, shard: int, accepted: pb.SessionAccepted, address: str) -> None: ...
    def on_disconnected(self, shard: int) -> None: ...
    def on_dispatches(self, shard: int, items) -> None: ...
    def on_cancel(self, shard: int, items) -> None: ...
    def on_acks(self, shard: int, acks: pb.CompletionAcks) -> None: ...
    def outgoing(self, shard: int, now_s: float) -> list[pb.SupervisorMessage]: ...
    def heartbeat(self, shard: int) -> pb.SupervisorMessage: ...
    def next_due_s(self, shard: int) -> float | None: ...


class SessionEnded(Exception):
    """The stream ended or Flow broke the protocol; the session reconnects."""


class NotLeader(Exception):
    def __init__(self, hint: str):
        super().__init__(f"not the leader (hint {hint or 'none'})")
        self.hint = hint


class ShardSession:
    """One shard's stream, reconnecting until cancelled."""

    def __init__(self, shard: int, host: SessionHost, shard_map: ShardMap,
                 channels: ChannelCache, rng: random.Random, on_reconnect=None):
        self.shard = shard
        self.host = host
        self.shard_map = shard_map
        self.channels = channels
        self.connected = False
        self.address: str | None = None
        self.wake = asyncio.Event()   # set when there may be something to send
        self._backoff = Backoff(rng)
        self._failures = 0   # session attempts that failed since the last accepted one
        self._accepted = False  # the current attempt got `accepted`
        self._on_reconnect = on_reconnect or (lambda shard: None)

    async def run(self) -> None:
        hint = None
        failed_s = -math.inf
        while True:
            address = hint or await self.shard_map.leader(self.shard, newer_than_s=failed_s)
            hint = None
            if address is None:
                self._log_failure("shard %d has no known leader; retrying", self.shard)
            else:
                self._accepted = False
                try:
                    await self._one_session(address)
                except NotLeader as exc:
                    hint = exc.hint or None
                    self._log_failure("shard %d: %s is %s; reconnecting", self.shard, address, exc)
                except (grpc.aio.AioRpcError, SessionEnded, TimeoutError) as exc:
                    self._log_failure("shard %d: session with %s ended: %s; reconnecting",
                                      self.shard, address, _describe(exc))
                except Exception:  # a bug here must not end the session for good
                    log.exception("shard %d: session with %s failed", self.shard, address)
            failed_s = time.monotonic()
            self._on_reconnect(self.shard)
            await asyncio.sleep(self._backoff.next_s())

    def _log_failure(self, message: str, *args) -> None:
        """INFO for the first failure in a row and every FAILURES_LOGGED_EVERY-th after it;
        DEBUG between (a cluster that is down for a minute must not flood the log)."""
        if self._accepted:  # an established session ended: not a failed attempt
            log.info(message, *args)
            return
        self._failures += 1
        level = logging.INFO if self._failures % FAILURES_LOGGED_EVERY == 1 else logging.DEBUG
        suffix = f" (failure {self._failures} in a row)" if self._failures > 1 else ""
        log.log(level, message + suffix, *args)

    async def _one_session(self, address: str) -> None:
        self.address = address
        call = pb_grpc.SupervisorSessionsStub(self.channels.get(address)).Session()
        try:
            await call.write(pb.SupervisorMessage(hello=self.host.hello(self.shard)))
            first = await asyncio.wait_for(call.read(), ACCEPT_TIMEOUT_S)
            kind = None if first is grpc.aio.EOF else first.WhichOneof("body")
            if kind == "not_leader_hint":
                raise NotLeader(first.not_leader_hint)
            if kind != "accepted":
                raise SessionEnded(f"expected `accepted` first, got {kind or 'end of stream'}")
            self.connected = True
            self._backoff.reset()
            log.info("shard %d: session with %s accepted (lease %d ms)%s", self.shard, address,
                     first.accepted.lease_ms,
                     f" after {self._failures} failed attempts" if self._failures else "")
            self._failures = 0
            self._accepted = True
            self.host.on_accepted(self.shard, first.accepted, address)
            await self._serve(call, first.accepted.lease_ms or LEASE_MS_FALLBACK)
        finally:
            if self.connected:
                self.connected = False
                self.host.on_disconnected(self.shard)
            call.cancel()

    async def _serve(self, call, lease_ms: int) -> None:
        reader = asyncio.create_task(self._read(call))
        writer = asyncio.create_task(self._write(call, lease_ms))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended the session
        raise SessionEnded("session loop ended")

    async def _read(self, call) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise SessionEnded("Flow ended the stream")
            kind = message.WhichOneof("body")
            if kind == "dispatches":
                self.host.on_dispatches(self.shard, message.dispatches.items)
            elif kind == "acks":
                self.host.on_acks(self.shard, message.acks)
            elif kind == "cancel":
                self.host.on_cancel(self.shard, message.cancel.items)
            elif kind == "not_leader_hint":
                raise NotLeader(message.not_leader_hint)
            else:
                log.warning("shard %d: unexpected %s from Flow: ignored", self.shard, kind)
            self.wake.set()  # acks may release withheld credit; dispatches may fail at once

    async def _write(self, call, lease_ms: int) -> None:
        """The only writer of the stream: completions, credit, heartbeats."""
        interval_s = min(HEARTBEAT_INTERVAL_MAX_S, max(HEARTBEAT_INTERVAL_MIN_S, lease_ms / 3000.0))
        next_heartbeat_s = time.monotonic() + interval_s
        while True:
            self.wake.clear()
            for message in self.host.outgoing(self.shard, time.monotonic()):
                await call.write(message)
            now_s = time.monotonic()
            if now_s >= next_heartbeat_s:
                await call.write(self.host.heartbeat(self.shard))
                next_heartbeat_s = now_s + interval_s
            due_s = self.host.next_due_s(self.shard)
            wake_s = next_heartbeat_s if due_s is None else min(next_heartbeat_s, due_s)
            timeout_s = wake_s - time.monotonic()
            if timeout_s > 0:
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout_s)
                except TimeoutError:
                    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "no answer to hello in time"
    return str(exc)
