"""The local status endpoint (127.0.0.1 by default): /healthz, /ready, /metrics,
/status (JSON). It only reads health; it never touches keys.

Served by the standard library's ``http.server`` on one background thread:
the agent's memory budget (<= 36 MiB RSS) has no room for a second HTTP stack,
and four read-only GET routes need none. The thread sleeps in ``select`` until
a client connects or ``stop()`` writes to its wake-up pipe: an idle agent's
status endpoint costs no CPU (``serve_forever`` would wake twice a second to
look for a shutdown request). The event loop keeps changing health
while a request is served, so each request takes ``Health.current`` once (a
frozen snapshot the loop replaces, never changes) and answers from that
object alone.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.status.health import Health
from meshcore.clock import Clock

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], health: Health, clock: Clock) -> None:
        self.health = health
        self.clock = clock
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "mesh-agent"
    sys_version = ""
    timeout = 5

    def do_GET(self) -> None:
        health = self.server.health.current  # one consistent snapshot per request
        now = self.server.clock.now()
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/ready":
            ready = health.ready(now)
            self._json(200 if ready else 503, {
                "ready": ready, "phase": health.phase, "summary": health.summary(now)})
        elif path == "/metrics":
            # prometheus-client is loaded on the first scrape, not at start: an
            # agent nobody scrapes never pays its memory.
            from agent.status.metrics import render

            self._send(200, render(health, now), "text/plain; version=0.0.4")
        elif path == "/status":
            self._json(200, health.as_dict(now))
        else:
            self._json(404, {"error": "not found"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body, indent=2).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes every few seconds would drown the journal


class StatusServer:
    def __init__(self, health: Health, clock: Clock, *, host: str, port: int) -> None:
        self._health = health
        self._clock = clock
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None  # (read, write) ends of the pipe

    async def start(self) -> None:
        self._server = _Server(self._address, self._health, self._clock)
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]),
                                        name="status-endpoint", daemon=True)
        self._thread.start()
        log.info("status endpoint listening",
                 extra={"address": f"{self._address[0]}:{self._address[1]}"})

    @staticmethod
    def _serve(server: _Server, wake: int) -> None:
        """Until ``stop()``: each connection is handled by ``handle_request`` (a
        thread per request, as ThreadingHTTPServer does)."""
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj == wake:
                        return
                    server.handle_request()

    async def stop(self) -> None:
        if self._server is None or self._wake is None or self._thread is None:
            return
        os.write(self._wake[1], b"x")
        self._thread.join(timeout=5)
        self._server.server_close()
        for fd in self._wake:
            os.close(fd)
        self._server = None
        self._wake = None
