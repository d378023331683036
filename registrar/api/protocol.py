"""Connections: aiohttp's own handler (``web.Server``, a public protocol factory)
behind a thin asyncio protocol of ours, so that every answer is the API's JSON
``Error`` body, even for a request aiohttp cannot parse (request line or headers
over the limit, too many headers, malformed HTTP) and answers by itself with a
text page that may echo the offending bytes.

How: the handler writes through ``AnswerGuard``, our transport wrapper. The
application writes its whole response inside ``answer`` (a window the guard
knows about); anything written outside the window is aiohttp's own error page,
which the guard replaces with our JSON error before closing the connection. The
only other write aiohttp makes by itself, the ``100 Continue`` interim answer,
passes through. Nothing about a failed request is logged: its bytes could hold
anything (aiohttp's own logger is silenced for the same reason).

The guard also bounds time per connection (``request_timeout``): from the
connection's start or the end of the last answer until a request's head has
arrived, and from there until its answer starts (body included), each at
most that long; past it the connection is aborted. A client trickling a head
or a body, or idling on a kept-alive connection, cannot hold a file forever.
How many connections there may be is ``registrar/api/connections.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web

from registrar.api.connections import HANDSHAKE_SECONDS, ConnectionGate
from registrar.api.logbudget import LogBudget
from registrar.api.tls import RefusingTls
from registrar.rejections import Rejected

log = logging.getLogger("registrar.http")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# aiohttp logs a failed parse with the exception, whose text can quote the request.
_AIOHTTP_LOG = logging.getLogger("registrar.http.aiohttp")
_AIOHTTP_LOG.addHandler(logging.NullHandler())
_AIOHTTP_LOG.propagate = False


def runner_options(max_header_bytes: int, request_timeout: float) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to aiohttp's handler)."""
    return {"max_line_size": max_header_bytes, "max_field_size": max_header_bytes,
            "keepalive_timeout": request_timeout, "access_log": None,
            "logger": _AIOHTTP_LOG, "handle_signals": False}


def _raw_error(rejection: Rejected) -> bytes:
    body = json.dumps(rejection.body()).encode()
    head = [f"HTTP/1.1 {rejection.status} {HTTPStatus(rejection.status).phrase}",
            "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close"]
    if rejection.retry_after is not None:
        head.append(f"Retry-After: {rejection.retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class AnswerGuard(asyncio.Transport):
    """The transport aiohttp's handler writes to (see the module docstring)."""

    def __init__(self, real: asyncio.Transport, timeout: float,
                 log_budget: LogBudget | None = None) -> None:
        super().__init__()
        self._real = real
        self._log_budget = log_budget
        self._timeout = timeout
        self.answering = False
        self._replaced = False
        self._timer: asyncio.TimerHandle | None = None
        self.restart_timer()

    def restart_timer(self) -> None:
        """A new period of at most ``timeout`` for the client's next step."""
        self.stop_timer()
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        log.debug("closing a connection that sent no complete request within %.0f s",
                  self._timeout)
        self._real.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.answering or bytes(data) == _CONTINUE:
            self._real.write(data)
        elif not self._replaced:
            self._replaced = True
            self._replace(bytes(data[:12]))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _replace(self, status_line: bytes) -> None:
        status = int(status_line[9:12]) if status_line[9:12].isdigit() else 500
        peer = self._real.get_extra_info("peername")
        remote = peer[0] if isinstance(peer, tuple) else "-"
        suffix = "" if self._log_budget is None else self._log_budget.take(f"http:{status}")
        if status >= 500:
            if suffix is not None:
                log.error("internal error handling a request from %s%s", remote, suffix)
            rejection = Rejected("internal", "internal error; retry later", retry_after=1)
        else:
            if suffix is not None:
                log.info("unparseable request from %s (%d)%s", remote, status, suffix)
            rejection = Rejected("bad_request", "request line or headers too large or "
                                 "malformed")
        self._real.write(_raw_error(rejection))
        self._real.close()

    # Everything else is the real transport's.
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._real.is_closing()

    def close(self) -> None:
        self.stop_timer()
        self._real.close()

    def abort(self) -> None:
        self.stop_timer()
        self._real.abort()

    def is_reading(self) -> bool:
        return self._real.is_reading()

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def write_eof(self) -> None:
        self._real.write_eof()


class Guarded(asyncio.Protocol):
    """Lets a connection in only if the worker's gate admits it (and counts it out
    when it goes). With a ``timeout`` (the HTTPS API) the inner protocol gets an
    ``AnswerGuard`` instead of the real transport; without one (the Istio CA port's
    HTTP/2, whose streams have their own lifetimes) it gets the transport."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate, timeout: float | None,
                 log_budget: LogBudget | None) -> None:
        self._inner = inner
        self._gate = gate
        self._timeout = timeout
        self._log_budget = log_budget
        self._guard: AnswerGuard | None = None
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "-"
        if not self._gate.admit(address):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._address = address
        if self._timeout is None:
            self._inner.connection_made(transport)
            return
        # uvloop's TLS transport has the Transport methods without the base class.
        self._guard = AnswerGuard(cast(asyncio.Transport, transport), self._timeout,
                                  self._log_budget)
        self._inner.connection_made(self._guard)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._address is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        if self._guard is not None:
            self._guard.stop_timer()
        self._gate.release(self._address)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def request_started(request: web.BaseRequest) -> None:
    """The head has arrived: the body and the handling get a period of their own."""
    guard = request.transport
    if isinstance(guard, AnswerGuard):
        guard.restart_timer()


async def answer(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Write the application's whole response now, inside the guard's window."""
    # aiohttp would name itself and Python with their versions: no help to anyone
    # but an attacker choosing an exploit.
    response.headers["Server"] = "mesh-registrar"
    guard = request.transport
    if isinstance(guard, AnswerGuard):
        guard.stop_timer()  # a client slow to read is the kernel's send buffer's problem
        guard.answering = True
    try:
        await response.prepare(request)
        await response.write_eof()
    finally:
        if isinstance(guard, AnswerGuard):
            guard.answering = False
            guard.restart_timer()


async def listen(runner: web.AppRunner, *, host: str, port: int, ssl_context: ssl.SSLContext,
                 reuse_port: bool, gate: ConnectionGate, request_timeout: float,
                 log_budget: LogBudget | None = None) -> asyncio.Server:
    """Listen on ``runner``'s (set up) server, each connection behind a guard."""
    handlers = runner.server
    assert handlers is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    # TLS is ours, not the loop's, so a refused handshake sends its alert (tls.py).
    return await loop.create_server(
        lambda: RefusingTls(loop, Guarded(handlers(), gate, request_timeout, log_budget),
                            ssl_context, handshake_timeout=HANDSHAKE_SECONDS,
                            log_budget=log_budget),
        host, port, reuse_port=reuse_port, backlog=1024)
