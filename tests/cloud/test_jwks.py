"""The JWKS cache: Google rotates keys, so an unknown kid refreshes the set, but
never more than once per interval; a failed fetch keeps the keys it had."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from aiohttp import web

from registrar.attestation.jwks import JwksCache, parse_jwks
from registrar.rejections import Rejected
from tests.fakes.clock import FakeClock
from tests.fakes.cloud_pki import new_key
from tests.fakes.serve import serving


def jwk(key: Any, kid: str, **extra: str) -> dict[str, Any]:
    out = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    out.update(kid=kid, **extra)
    return dict(out)


class Server:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.calls = 0

    def app(self) -> web.Application:
        app = web.Application()

        async def certs(request: web.Request) -> web.Response:
            self.calls += 1
            return web.json_response({"keys": self.keys}, status=self.status)

        app.router.add_get("/certs", certs)
        return app


def test_rotation_is_picked_up_after_the_refresh_interval():
    server, clock = Server(), FakeClock(monotonic=0.0)
    k1, k2 = new_key(), new_key()
    server.keys = [jwk(k1, "one")]
    with serving(server.app()) as url:
        cache = JwksCache(url + "/certs", clock=clock, min_refresh_interval=30, max_age=3600)
        asyncio.run(cache.key("one"))
        server.keys = [jwk(k1, "one"), jwk(k2, "two")]  # Google adds a key
        clock.advance(10)
        with pytest.raises(Rejected) as caught:
            asyncio.run(cache.key("two"))  # too soon after the last fetch: no refresh
        assert caught.value.reason == "evidence_key_unknown"
        assert server.calls == 1
        clock.advance(21)
        assert asyncio.run(cache.key("two")) is not None  # one refresh, key found
        assert server.calls == 2
        server.status = 503  # Google unreachable: cached keys keep working
        clock.advance(3969)
        asyncio.run(cache.key("one"))
        assert server.calls == 3


def test_first_fetch_failure_is_a_retryable_internal_error():
    server = Server()
    server.status = 500
    with serving(server.app()) as url, pytest.raises(Rejected) as caught:
        asyncio.run(JwksCache(url + "/certs", clock=FakeClock()).key("any"))
    assert caught.value.reason == "internal"
    assert caught.value.action == "retry"


def test_only_rsa_signing_keys_of_2048_bits_or_more_are_kept():
    import cryptography.hazmat.primitives.asymmetric.rsa as rsa
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    keys = parse_jwks({"keys": [
        jwk(new_key(), "ok"), jwk(new_key(), "enc", use="enc"),
        jwk(new_key(), "hs", alg="HS256"), jwk(small, "small"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"}]})
    assert set(keys) == {"ok"}
