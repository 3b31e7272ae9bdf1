"""A tiny HTTP server on the supervisor's event loop: `GET /health` and `GET /metrics`.

On the loop rather than prometheus_client's thread so `/health` reads the supervisor's
state without locks. Bound to 127.0.0.1: it is for the machine's own probes and scraper.
One request per connection (`Connection: close`); requests are bounded in size and time.

`/health` answers 200 when the supervisor runs and every shard session is accepted, 503
otherwise (starting, draining, a shard without a session); the JSON body is the same.
"""

from __future__ import annotations

import asyncio
import json
import logging

from coda.supervisor.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
REQUEST_BYTES_MAX = 16 * 1024
REQUEST_TIMEOUT_S = 5.0


class HealthServer:
    def __init__(self, port: int, status, render_metrics):
        """`status()` -> dict with a "healthy" bool; `render_metrics()` -> bytes."""
        self.port = port
        self._status = status
        self._render_metrics = render_metrics
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, self.port,
                                                  limit=REQUEST_BYTES_MAX)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one picked
        log.info("health and metrics on http://%s:%d/health, /metrics", HOST, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            status, content_type, body = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(_response(status, content_type, body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] != b"GET":
            return 405, "text/plain", b"only GET\n"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/health":
            status = self._status()
            body = json.dumps(status, sort_keys=True).encode() + b"\n"
            return (200 if status.get("healthy") else 503), "application/json", body
        if path == b"/metrics":
            return 200, CONTENT_TYPE, self._render_metrics()
        return 404, "text/plain", b"not found: try /health or /metrics\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


def _response(status: int, content_type: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode() + body
