"""GCE attestor: a Google-signed identity token whose audience is the registrar's challenge."""

from __future__ import annotations

import httpx

from agent.attest.base import AttestError, Evidence
from agent.attest.config import AttestationConfig
from agent.attest.metadata import MetadataClient, MetadataError
from meshcore.secret import Secret

FLAVOR = {"Metadata-Flavor": "Google"}
IDENTITY_PATH = "/instance/service-accounts/default/identity"


class GceAttestor:
    name = "gce"
    needs_challenge = True

    def __init__(self, base_url: str, *, probe_timeout: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = MetadataClient("GCE", base_url, transport=transport)
        self._probe_timeout = probe_timeout

    @classmethod
    def from_config(cls, config: AttestationConfig) -> GceAttestor:
        return cls(config.gce_metadata_url, probe_timeout=config.probe_timeout)

    async def detect(self) -> bool:
        try:
            reply = await self._client.request("GET", "/", headers=FLAVOR,
                                               timeout=self._probe_timeout)
        except MetadataError:
            return False
        # Real GCE echoes the flavor header; anything else on that address is not GCE.
        return bool(reply.headers.get("Metadata-Flavor") == "Google")

    async def evidence(self, challenge: str | None) -> Evidence:
        if not challenge:
            raise AttestError("GCE evidence needs a registrar challenge", retryable=True)
        reply = await self._client.request(
            "GET", IDENTITY_PATH, headers=FLAVOR,
            params={"audience": challenge, "format": "full", "licenses": "FALSE"})
        if reply.headers.get("Metadata-Flavor") != "Google":
            raise AttestError(f"{self._client.base_url}: reply lacks Metadata-Flavor: Google; "
                              "not the GCE metadata server", retryable=False)
        token = reply.text.strip()
        if token.count(".") != 2:
            raise AttestError("GCE identity reply is not a JWT", retryable=True)
        return Evidence(type="gce", fields={"token": Secret(token)})

    def spent(self) -> None:
        """Nothing to clean up: every token is fresh and bound to one challenge."""
