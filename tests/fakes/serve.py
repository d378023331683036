"""Serve an aiohttp app from a background thread, so synchronous tests and
agents running under their own ``asyncio.run`` can reach it over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web


@contextmanager
def serving(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Yields the base URL (``http://host:port``) while the app serves."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    bound: list[int] = []
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        bound.append(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    ready.wait(10)
    try:
        yield f"http://{host}:{bound[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
