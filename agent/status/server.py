"""The local status endpoint (127.0.0.1 by default): /healthz, /ready, /metrics,
/status (JSON). It only reads health; it never touches keys.

Served on the agent's event loop by ``asyncio.start_server``, one request per
connection (HTTP/1.0 style: the answer ends with the connection). Four
read-only GET routes need no HTTP library: the standard library's
``http.server`` (with ``http.client`` and ``socketserver``) cost about 1.2 MiB
of the agent's resident memory and a thread that woke twice a second to look
for a shutdown request. Idle, this costs nothing: the loop
sleeps until a client connects. Each request takes ``Health.current`` once (a
frozen snapshot that is replaced, never changed) and answers from that object
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from agent.status.health import Health
from meshcore.clock import Clock

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0  # a client that connects and says nothing is dropped
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class StatusServer:
    def __init__(self, health: Health, clock: Clock, *, host: str, port: int) -> None:
        self._health = health
        self._clock = clock
        self._address = (host, port)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._address[0], self._address[1], reuse_address=True,
            limit=MAX_REQUEST_HEAD)
        log.info("status endpoint listening",
                 extra={"address": f"{self._address[0]}:{self._address[1]}"})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def answer(self, method: str, target: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for one request."""
        if method != "GET":
            return _json(405, {"error": "only GET"})
        health = self._health.current  # one consistent snapshot per request
        now = self._clock.now()
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/ready":
            ready = health.ready(now)
            return _json(200 if ready else 503, {
                "ready": ready, "phase": health.phase, "summary": health.summary(now)})
        if path == "/metrics":
            # prometheus-client is loaded on the first scrape, not at start: an
            # agent nobody scrapes never pays its memory.
            from agent.status.metrics import render

            return 200, render(health, now), "text/plain; version=0.0.4"
        if path == "/status":
            return _json(200, health.as_dict(now))
        return _json(404, {"error": "not found"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return  # scrapes every few seconds would drown the journal: no log
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) == 3 and parts[2].startswith("HTTP/"):
                code, body, content_type = self.answer(parts[0], parts[1])
            else:
                code, body, content_type = _json(400, {"error": "not an HTTP request"})
            writer.write(
                (f"HTTP/1.0 {code} {_REASONS.get(code, 'Error')}\r\n"
                 f"Server: mesh-agent\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                + body)
            await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _json(code: int, body: dict[str, Any]) -> tuple[int, bytes, str]:
    return code, json.dumps(body, indent=2).encode(), "application/json"
