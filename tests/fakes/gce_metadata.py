"""A fake GCE metadata server: ``Metadata-Flavor: Google`` required and echoed,
a fresh RS256 identity token per call with the caller's audience, and the
JWKS the registrar fetches (``/oauth2/v3/certs``), all signed with test keys."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.cloud_pki import CloudPki

PREFIX = "/computeMetadata/v1"


class FakeGce:
    def __init__(self, pki: CloudPki, *, instance_id: str = "4242424242424242",
                 project_id: str = "mesh-test") -> None:
        self.pki = pki
        self.instance_id = instance_id
        self.project_id = project_id
        self.identity_calls = 0
        self.jwks_calls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PREFIX + "/", self._root)
        app.router.add_get(PREFIX + "/instance/service-accounts/default/identity",
                           self._identity)
        app.router.add_get("/oauth2/v3/certs", self._jwks)
        return app

    @staticmethod
    def _check(request: web.Request) -> None:
        # The real server refuses requests without the flavor header and any
        # request that carries X-Forwarded-For (it came through a proxy).
        if request.headers.get("Metadata-Flavor") != "Google" or \
                "X-Forwarded-For" in request.headers:
            raise web.HTTPForbidden(text="Missing required header Metadata-Flavor: Google")

    @staticmethod
    def _reply(text: str) -> web.Response:
        return web.Response(text=text, content_type="application/text",
                            headers={"Metadata-Flavor": "Google"})

    async def _root(self, request: web.Request) -> web.Response:
        self._check(request)
        return self._reply("instance/\nproject/\n")

    async def _identity(self, request: web.Request) -> web.Response:
        self._check(request)
        audience = request.query.get("audience")
        if not audience:
            raise web.HTTPBadRequest(text="non-empty audience parameter required")
        self.identity_calls += 1
        if request.query.get("format") != "full":
            token = self.pki.gce_token(audience, claims={
                k: v for k, v in self.pki.gce_claims(audience).items() if k != "google"})
        else:
            token = self.pki.gce_token(audience, instance_id=self.instance_id,
                                       project_id=self.project_id)
        return self._reply(token)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_calls += 1
        return web.json_response(self.pki.jwks(), headers={"Cache-Control": "max-age=3600"})
