"""A JSON Web Key Set fetched from a URL, cached, refreshed with a bound.

Keys are refreshed when the cache is older than ``max_age``. An unknown
``kid`` (Google rotates its keys) triggers at most one refresh per
``min_refresh_interval``, shared by concurrent callers, so a flood of tokens
with invented kids cannot turn the registrar into a JWKS-fetching amplifier.
Only RSA keys usable for RS256 are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from meshcore.clock import Clock
from registrar.rejections import Rejected

log = logging.getLogger(__name__)

GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
MAX_JWKS_BYTES = 256 * 1024


class JwksCache:
    def __init__(self, url: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Clock, max_age: float = 3600.0,
                 min_refresh_interval: float = 30.0, timeout: float = 5.0,
                 verify: Any = True) -> None:
        self._url = url
        self._transport = transport
        self._clock = clock
        self._max_age = max_age
        self._min_refresh = min_refresh_interval
        self._timeout = timeout
        self._verify = verify
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> rsa.RSAPublicKey:
        """The RSA key named ``kid``; raises ``evidence_key_unknown`` or ``internal``."""
        if self._stale():
            await self._refresh(forced=False)
        found = self._keys.get(kid)
        if found is None:
            await self._refresh(forced=True)
            found = self._keys.get(kid)
        if found is None:
            raise Rejected("evidence_key_unknown",
                           f"token key id {kid[:64]!r} is not in the key set at {self._url}")
        return found

    def _stale(self) -> bool:
        return (self._fetched_at is None
                or self._clock.monotonic() - self._fetched_at > self._max_age)

    async def _refresh(self, *, forced: bool) -> None:
        async with self._lock:
            now = self._clock.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
                return  # another caller just refreshed (or failed to); do not hammer
            if not forced and not self._stale():
                return
            self._attempted_at = now
            try:
                self._keys = await self._fetch()
                self._fetched_at = now
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("cannot refresh JWKS; keeping cached keys",
                            extra={"url": self._url, "error": str(exc)[:200]})
                if not self._keys:
                    raise Rejected("internal", f"key set {self._url} unavailable",
                                   retry_after=int(self._min_refresh)) from None

    async def _fetch(self) -> dict[str, rsa.RSAPublicKey]:
        self.fetches += 1
        async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout,
                                     follow_redirects=False, verify=self._verify) as client:
            reply = await client.get(self._url)
        if reply.status_code != 200:
            raise ValueError(f"HTTP {reply.status_code}")
        if len(reply.content) > MAX_JWKS_BYTES:
            raise ValueError("key set too large")
        return parse_jwks(json.loads(reply.content))


def parse_jwks(data: Any) -> dict[str, rsa.RSAPublicKey]:
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, rsa.RSAPublicKey] = {}
    for entry in data["keys"]:
        if not isinstance(entry, Mapping) or entry.get("kty") != "RSA":
            continue
        if entry.get("alg", "RS256") != "RS256" or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            key = PyJWK(dict(entry), algorithm="RS256").key
        except PyJWKError:
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
            keys[kid] = key
    return keys
