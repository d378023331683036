"""The connection handler: aiohttp's, except that a request it cannot parse (request
line or headers over the limit, too many headers, malformed HTTP) gets the API's
JSON ``Error`` body instead of a text page that echoes the offending bytes.

Nothing about the failed request is logged: its bytes could hold anything.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from registrar.rejections import Rejected

log = logging.getLogger("registrar.http")

# Idle keep-alive connections are cheap but not free; agents renew rarely.
KEEPALIVE_SECONDS = 75.0
# A peer that opens TCP and never finishes the TLS handshake is dropped after this.
HANDSHAKE_SECONDS = 10.0


class JsonErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error body")
        if status >= 500:
            log.error("internal error handling a request from %s: %s", request.remote,
                      type(exc).__name__ if exc else "-")
            rejection = Rejected("internal", "internal error; retry later", retry_after=1)
        else:
            log.info("unparseable request from %s (%d)", request.remote, status)
            rejection = Rejected("bad_request", "request line or headers too large or "
                                 "malformed")
        response = web.json_response(rejection.body(), status=rejection.status)
        response.force_close()
        return response


async def listen(runner: web.AppRunner, *, host: str, port: int, ssl_context: ssl.SSLContext,
                 reuse_port: bool, max_header_bytes: int) -> asyncio.Server:
    """Listen with ``JsonErrorHandler`` connections on ``runner``'s (set up) server."""
    manager = runner.server
    assert manager is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {"max_line_size": max_header_bytes,
                               "max_field_size": max_header_bytes,
                               "keepalive_timeout": KEEPALIVE_SECONDS,
                               "access_log": None}
    return await loop.create_server(
        lambda: JsonErrorHandler(manager, loop=loop, **options), host, port,
        ssl=ssl_context, ssl_handshake_timeout=HANDSHAKE_SECONDS, reuse_port=reuse_port,
        backlog=1024)
