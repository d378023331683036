"""A fake EC2 instance metadata service in IMDSv2-required mode.

PUT ``/latest/api/token`` with a TTL header (1..21600) gives a session token;
every GET needs a live one (401 otherwise, as when a token went stale).
``drop_put_replies`` swallows the PUT reply the way a hop limit of 1 does for
a client one hop too far (the request arrives; the answer never does).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time

from aiohttp import web

from tests.fakes.cloud_pki import CloudPki


class FakeEc2:
    def __init__(self, pki: CloudPki, *, document: bytes | None = None,
                 region: str = "us-east-1", drop_put_replies: bool = False,
                 uses_per_token: int | None = None) -> None:
        self.pki = pki
        self.region = region
        self.document = document or pki.aws_document(region=region)
        self.pkcs7 = pki.aws_pkcs7(self.document, region)
        self.drop_put_replies = drop_put_replies
        self.tokens: dict[str, float] = {}
        self.unauthorized = 0
        self.puts = 0
        # A token that goes stale after N uses stands in for one whose TTL ran out.
        self.uses_per_token = uses_per_token
        self._uses: dict[str, int] = {}

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/dynamic/instance-identity/document", self._document)
        app.router.add_get("/latest/dynamic/instance-identity/rsa2048", self._rsa2048)
        app.router.add_get("/latest/meta-data/", self._meta)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        if "X-Forwarded-For" in request.headers:
            raise web.HTTPForbidden()
        try:
            ttl = int(request.headers["X-aws-ec2-metadata-token-ttl-seconds"])
        except (KeyError, ValueError):
            raise web.HTTPBadRequest() from None
        if not 1 <= ttl <= 21600:
            raise web.HTTPBadRequest()
        self.puts += 1
        if self.drop_put_replies:
            await asyncio.sleep(3600)
        token = base64.urlsafe_b64encode(secrets.token_bytes(42)).decode()
        self.tokens[token] = time.monotonic() + ttl
        return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

    def _authorize(self, request: web.Request) -> None:
        token = request.headers.get("X-aws-ec2-metadata-token", "")
        if self.tokens.get(token, 0.0) < time.monotonic():
            self.unauthorized += 1
            raise web.HTTPUnauthorized()
        self._uses[token] = self._uses.get(token, 0) + 1
        if self.uses_per_token is not None and self._uses[token] >= self.uses_per_token:
            self.tokens.pop(token)

    async def _document(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.Response(body=self.document, content_type="text/plain")

    async def _rsa2048(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.Response(text=self.pkcs7, content_type="text/plain")

    async def _meta(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return web.Response(text="ami-id\ninstance-id\n", content_type="text/plain")
