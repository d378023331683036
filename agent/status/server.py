"""The local status endpoint (127.0.0.1 by default): /healthz, /ready, /metrics,
/status (JSON). It only reads ``Health``; it never touches keys."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from agent.clock import Clock
from agent.status.health import Health
from agent.status.metrics import render

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(self, health: Health, clock: Clock, *, host: str, port: int) -> None:
        self._health = health
        self._clock = clock
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        now = self._clock.now()
        ready = self._health.ready(now)
        return web.json_response(
            {"ready": ready, "phase": self._health.phase, "summary": self._health.summary(now)},
            status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render(lambda: self._health, self._clock)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._health.as_dict(self._clock.now()), indent=2),
                            content_type="application/json")

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        log.info("status endpoint listening", extra={"address": f"{self._host}:{self._port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
