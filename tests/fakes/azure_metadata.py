"""A fake Azure IMDS: ``Metadata: true`` required, ``api-version`` required, the
attested document signed (PKCS#7, test chain) over the caller's nonce."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.cloud_pki import CloudPki

VM_ID = "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
SUBSCRIPTION = "8d10da13-8125-4ba9-a717-bf7490507b3d"


class FakeAzure:
    def __init__(self, pki: CloudPki, *, vm_id: str = VM_ID,
                 subscription_id: str = SUBSCRIPTION) -> None:
        self.pki = pki
        self.vm_id = vm_id
        self.subscription_id = subscription_id
        self.documents = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metadata/instance", self._instance)
        app.router.add_get("/metadata/attested/document", self._attested)
        return app

    @staticmethod
    def _check(request: web.Request) -> None:
        if request.headers.get("Metadata") != "true" or "X-Forwarded-For" in request.headers:
            raise web.HTTPBadRequest(text='{"error": "Bad request. Required metadata header '
                                          'not specified"}', content_type="application/json")
        if "api-version" not in request.query:
            raise web.HTTPBadRequest(text='{"error": "Bad request. api-version was not '
                                          'specified in the request"}',
                                     content_type="application/json")

    async def _instance(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"compute": {"vmId": self.vm_id,
                                              "subscriptionId": self.subscription_id,
                                              "location": "westeurope"},
                                  "network": {"interface": []}})

    async def _attested(self, request: web.Request) -> web.Response:
        self._check(request)
        nonce = request.query.get("nonce", "")
        if len(nonce) > 32 or (nonce and not nonce.isalnum()):
            raise web.HTTPBadRequest(text='{"error": "Bad request. nonce is invalid"}',
                                     content_type="application/json")
        self.documents += 1
        content = self.pki.azure_content(nonce, vm_id=self.vm_id,
                                         subscription_id=self.subscription_id)
        return web.json_response({"encoding": "pkcs7",
                                  "signature": self.pki.azure_signature(content)})
