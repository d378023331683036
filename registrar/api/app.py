"""The aiohttp application: routes, rate limits, error bodies, decision logs, metrics.

The client certificate is read from the request's own TLS object on every
request (never cached per connection), so an evicted or revoked identity is
refused on the next request even on a kept-alive connection.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography import x509

from registrar.api.faults import FaultLog
from registrar.api.logbudget import LogBudget
from registrar.api.metrics import Metrics
from registrar.api.protocol import answer, request_started
from registrar.api.ratelimit import PerAddressLimiter, RateLimiter
from registrar.api.service import Decision, Service
from registrar.api.store_status import StoreStatus
from registrar.api.wire import error_response, read_json, timestamp
from registrar.catalog.agent_api import WorkloadApi
from registrar.config import RegistrarConfig
from registrar.rejections import Rejected
from registrar.store.challenges import ChallengeStore
from registrar.store.connection import StoreUnavailable

log = logging.getLogger("registrar.decisions")

_FAMILIES = {"/v1/attest": "attest", "/v1/renew": "renew", "/v1/challenge": "challenge",
             "/v1/bundle": "read", "/v1/workload/status": "read",
             "/v1/workload/settings": "read"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The application's metrics, for the server's once-a-second flush (metrics.py).
METRICS = web.AppKey("metrics", Metrics)


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The verified client leaf (OpenSSL checked its chain to our roots), if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else x509.load_der_x509_certificate(der)


def _http_rejection(status: int) -> Rejected:
    """aiohttp's own HTTP errors (routing, mostly) as the API's Error body."""
    if status == 404:
        return Rejected("not_found", "no such path")
    if status == 405:
        return Rejected("method_not_allowed", "method not allowed on this path")
    if status == 413:
        return Rejected("body_too_large", "request body too large")
    if status == 415:
        return Rejected("unsupported_media_type", "unsupported content type")
    if status < 500:
        return Rejected("bad_request", "malformed request")
    return Rejected("internal", "internal error; retry later", retry_after=1)


def _remote(request: web.Request) -> str:
    return request.remote or "-"


class Api:
    def __init__(self, *, config: RegistrarConfig, service: Service,
                 challenges: ChallengeStore, limiter: RateLimiter, metrics: Metrics,
                 challenge_types: tuple[str, ...], faults: FaultLog,
                 log_budget: LogBudget, workloads: WorkloadApi | None = None,
                 extra_metrics: Callable[[], str] | None = None,
                 store: StoreStatus | None = None) -> None:
        """``challenge_types``: the enabled evidence types that bind a challenge."""
        self._challenge_types = challenge_types
        self._log_budget = log_budget
        self._challenge_limiter = PerAddressLimiter(config.limits.challenge_per_address,
                                                    limiter.clock)
        self._faults = faults
        self._config = config
        self._service = service
        self._challenges = challenges
        self._limiter = limiter
        self._metrics = metrics
        self._workloads = workloads
        self._extra_metrics = extra_metrics
        self._store = store or StoreStatus("sqlite")

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._guard],
                              client_max_size=self._config.limits.max_body_bytes)
        app[METRICS] = self._metrics
        app.router.add_post("/v1/challenge", self._challenge, expect_handler=self._expect)
        app.router.add_post("/v1/attest", self._attest, expect_handler=self._expect)
        app.router.add_post("/v1/renew", self._renew, expect_handler=self._expect)
        app.router.add_get("/v1/bundle", self._bundle)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics_page)
        if self._workloads is not None:
            app.router.add_post("/v1/workload/status", self._workload_status)
            app.router.add_get("/v1/workload/settings", self._workload_settings)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer is written here, inside the connection guard's window
        (registrar/api/protocol.py): anything else on the wire is aiohttp's own."""
        request_started(request)
        response = await self._respond(request, handler)
        await answer(request, response)
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: invite only a body we would read. (This runs
        before the middleware, so it answers through ``answer`` itself.)"""
        if tuple(request.version) != (1, 1):
            return None
        limit = self._config.limits.max_body_bytes
        length = request.content_length
        if request.headers.get("Expect", "").lower() != "100-continue":
            rejection = Rejected("bad_request", "the only Expect value taken is 100-continue")
        elif length is not None and length > limit:
            rejection = Rejected("body_too_large", f"body is {length} bytes; the limit is "
                                 f"{limit}")
        else:
            if request.transport is not None:
                request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        response = error_response(rejection)
        response.force_close()  # the client may send the body anyway
        await answer(request, response)
        return response

    async def _respond(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Rate limit first (cheapest), then turn every failure into an Error body."""
        family = _FAMILIES.get(request.path)
        try:
            if family is not None:
                wait = self._limiter.retry_after(family)
                if wait is not None:
                    raise Rejected("rate_limited", f"{family} requests over the limit",
                                   retry_after=wait)
            return await handler(request)
        except Rejected as exc:
            if exc.reason == "rate_limited" and family in ("attest", "renew"):
                self._metrics.decision(family, exc.reason, 0.0)
            return error_response(exc)
        except web.HTTPException as exc:  # the router's 404 and 405
            return error_response(_http_rejection(exc.status))
        except ConnectionError:  # the client went away mid-request: not our error
            log.debug("client %s disconnected during %s", _remote(request), family or "-")
            return error_response(Rejected("bad_request", "connection lost"))
        except Exception as exc:
            self._faults.report(exc, request.path if family else "-")
            self._metrics.decision(family or "other", "internal", 0.0)
            return error_response(Rejected("internal", "internal error; retry later",
                                           retry_after=1))

    async def _decide(self, operation: str, request: web.Request,
                      run: Callable[[], Awaitable[Decision]]) -> web.Response:
        started = time.perf_counter()
        remote = _remote(request)
        try:
            decision = await run()
        except Rejected as exc:
            self._metrics.decision(operation, exc.reason, time.perf_counter() - started)
            # Never exc.message: it may quote the client (an evidence type, a field
            # name, a hostname). The reason and the registrar's own ids only, and at
            # most so many lines per reason a minute (logbudget.py).
            suffix = self._log_budget.take(f"{operation}:{exc.reason}")
            if suffix is not None:
                log.info("%s rejected reason=%s remote=%s%s%s", operation, exc.reason, remote,
                         "" if exc.logged is None else f" {exc.logged}", suffix)
            raise
        self._metrics.decision(operation, None, time.perf_counter() - started)
        log.info("%s ok spiffe_id=%s subject=%s remote=%s%s", operation, decision.spiffe_id,
                 decision.subject, remote, " answered_again=same_key" if decision.again else "")
        return web.json_response(decision.body)

    async def _attest(self, request: web.Request) -> web.Response:
        async def run() -> Decision:
            body = await read_json(request, self._config.limits.max_body_bytes)
            return await self._service.attest(body, _remote(request))
        return await self._decide("attest", request, run)

    async def _renew(self, request: web.Request) -> web.Response:
        async def run() -> Decision:
            body = await read_json(request, self._config.limits.max_body_bytes)
            return await self._service.renew(body, peer_certificate(request), _remote(request))
        return await self._decide("renew", request, run)

    async def _challenge(self, request: web.Request) -> web.Response:
        if not self._challenge_types:  # nothing would consume it: store nothing
            raise Rejected("unsupported_evidence", "no enabled evidence type takes a challenge")
        # Each answer is a stored row (until it expires, challenge_ttl): one caller
        # gets its own share, beside the family's bucket every caller shares.
        wait = self._challenge_limiter.retry_after(_remote(request))
        if wait is not None:
            raise Rejected("rate_limited", "challenge requests from this address over the "
                           "limit", retry_after=wait)
        nonce, expires = self._challenges.issue()
        return web.json_response({"nonce": nonce, "expires_at": timestamp(
            dt.datetime.fromtimestamp(expires, dt.UTC))})

    async def _bundle(self, request: web.Request) -> web.Response:
        """The bundle and its version; the version is also the ETag, so a poller
        sending ``If-None-Match`` gets a bodiless 304 while nothing changed. With a
        client certificate, ``If-None-Match`` also records which version the
        workload holds."""
        authority = self._service.authority()
        version = authority.bundle_version
        held = request.headers.get("If-None-Match", "").strip().removeprefix("W/").strip('"')
        if held.isdigit():
            # What the agent says it holds (applied), not what we are about to send:
            # `ca rotate activate` must wait until the new root is in use on the VM.
            self._service.bundle_seen(peer_certificate(request), int(held))
        etag = f'"{version}"'
        if held == str(version):
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response({"trust_domain": self._config.trust_domain,
                                  "trust_bundle": authority.bundle_pem, "version": version},
                                 headers={"ETag": etag})

    async def _healthz(self, request: web.Request) -> web.Response:
        """Alive (the process answers); the store's type, not its health: see /ready."""
        return web.json_response({"status": "ok", "store": self._store.kind})

    async def _ready(self, request: web.Request) -> web.Response:
        """Whether this replica can serve now: false (503 + Retry-After) while its
        database does not answer, so a load balancer sends agents elsewhere."""
        if not self._store.reachable():
            raise StoreUnavailable("ready_probe")
        return web.json_response({"status": "ready", "store": self._store.kind})

    async def _workload_status(self, request: web.Request) -> web.Response:
        assert self._workloads is not None
        body = await read_json(request, self._config.limits.max_body_bytes)
        return web.json_response(self._workloads.report(body, peer_certificate(request)))

    async def _workload_settings(self, request: web.Request) -> web.Response:
        assert self._workloads is not None
        return web.json_response(self._workloads.settings(peer_certificate(request)))

    async def _metrics_page(self, request: web.Request) -> web.Response:
        extra = self._extra_metrics() if self._extra_metrics is not None else ""
        return web.Response(body=self._metrics.render() + extra.encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4"})
