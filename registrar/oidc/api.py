"""HTTP: ``/.well-known/openid-configuration``, the JWKS, and ``POST /v1/oidc/token``.

The token endpoint takes only an attested workload: the request must come over
mTLS with its current certificate, checked exactly as a renewal is (issued by
this registrar, newest of its workload, not evicted or revoked, group still
giving that identity). The subject comes from that workload's group; a caller
may name a subject, audience and lifetime, and is refused if the subject is not
its own, the audience is not configured, or the lifetime is over the maximum.
A token never outlives the certificate that asked for it.

One log line per decision with the SPIFFE ID, subject, kid and expiry: never
the token.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web
from cryptography import x509

from meshcore.clock import Clock
from registrar.api.ratelimit import TokenBucket
from registrar.api.service import Service
from registrar.api.wire import only_keys, read_json
from registrar.config import Rate
from registrar.oidc.config import OidcConfig
from registrar.oidc.keyring import KeyRing
from registrar.oidc.tokens import discovery, sign, subject_of
from registrar.rejections import Rejected

log = logging.getLogger("registrar.decisions")

TOKEN_PATH = "/v1/oidc/token"  # noqa: S105 (a path)
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"
_KEYS = {"audience", "subject", "ttl_seconds"}
MAX_TRACKED = 100_000
PeerReader = Callable[[web.Request], x509.Certificate | None]


class OidcApi:
    def __init__(self, *, config: OidcConfig, service: Service, clock: Clock,
                 peer: PeerReader, max_body_bytes: int) -> None:
        self._config = config
        self._service = service
        self._clock = clock
        self._peer = peer
        self._max_body = max_body_bytes
        self._ring = KeyRing(config.key_dir, config.max_token_ttl)
        self._bucket = TokenBucket(Rate(config.per_second, config.burst), clock)
        # Per workload too, so one VM asking in a loop cannot starve the others. Bounded:
        # the oldest buckets go first (a forgotten VM just starts with a full bucket).
        self._per_workload: OrderedDict[int, TokenBucket] = OrderedDict()
        self._workload_rate = Rate(config.workload_per_second, config.workload_burst)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_get(JWKS_PATH, self._jwks)
        app.router.add_post(TOKEN_PATH, self._token)

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response(discovery(self._config),
                                 headers={"Cache-Control": "public, max-age=300"})

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = self._ring.current(self._clock.now().timestamp())
        # Short: verifiers that cache by max-age see a rotation's new key soon.
        return web.json_response(keys.jwks(), headers={"Cache-Control": "public, max-age=60"})

    async def _token(self, request: web.Request) -> web.Response:
        wait = self._bucket.take()
        if wait > 0.0:
            raise Rejected("rate_limited", "oidc token requests over the limit",
                           retry_after=max(1, math.ceil(wait)))
        remote = request.remote or "-"
        peer = self._peer(request)
        try:
            owner, group = self._service.authenticated(peer)
            self._limit_workload(owner.workload.id)
            body = await read_json(request, self._max_body)
            only_keys(body, _KEYS, set())
            subject = subject_of(group.namespace, group.service_account)
            audience, ttl = self._requested(body, subject)
        except Rejected as exc:
            # The reason and our own facts only: the message may quote client text.
            log.info("oidc_token rejected reason=%s remote=%s%s", exc.reason, remote,
                     f" {exc.logged}" if exc.logged else "")
            raise
        assert peer is not None  # authenticated() refuses a request without one
        now = self._clock.now().timestamp()
        expires = min(now + ttl, peer.not_valid_after_utc.timestamp())
        issued = sign(self._ring.current(now).signer, issuer=self._config.issuer,
                      subject=subject, audience=audience, now=now, expires_at=expires)
        log.info("oidc_token ok spiffe_id=%s subject=%s aud=%s kid=%s exp=%d remote=%s",
                 owner.spiffe_id, subject, audience, issued.kid, issued.expires_at, remote)
        return web.json_response({"token": issued.token, "subject": subject,
                                  "audience": audience, "issuer": self._config.issuer,
                                  "expires_in": issued.expires_at - issued.issued_at},
                                 headers={"Cache-Control": "no-store"})

    def _limit_workload(self, workload_id: int) -> None:
        bucket = self._per_workload.pop(workload_id, None) or TokenBucket(
            self._workload_rate, self._clock)
        self._per_workload[workload_id] = bucket  # most recent last
        while len(self._per_workload) > MAX_TRACKED:
            self._per_workload.popitem(last=False)
        wait = bucket.take()
        if wait > 0.0:
            raise Rejected("rate_limited", f"workload {workload_id} asked for tokens too "
                           "often", retry_after=max(1, math.ceil(wait)),
                           logged=f"workload={workload_id}")

    def _requested(self, body: dict[str, object], subject: str) -> tuple[str, float]:
        asked = body.get("subject", subject)
        if asked != subject:
            raise Rejected("oidc_subject_not_allowed",
                           f"this workload may only get tokens for {subject!r}")
        audience = body.get("audience", self._config.audiences[0])
        if not isinstance(audience, str) or audience not in self._config.audiences:
            raise Rejected("oidc_audience_not_allowed", "allowed audiences: "
                           + ", ".join(self._config.audiences))
        ttl = body.get("ttl_seconds", self._config.token_ttl)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not (
                10 <= ttl <= self._config.max_token_ttl):
            raise Rejected("bad_request", "'ttl_seconds' must be a number from 10 to "
                           f"{self._config.max_token_ttl:g}")
        return audience, float(ttl)
