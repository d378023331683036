"""Azure attestor: the IMDS attested document, with the registrar's challenge as nonce."""

from __future__ import annotations

import json

import httpx

from agent.attest.base import AttestError, Evidence
from agent.attest.config import AttestationConfig
from agent.attest.metadata import MetadataClient, MetadataError
from meshcore.secret import Secret

HEADERS = {"Metadata": "true"}
API_VERSION = "2021-02-01"
DOCUMENT_PATH = "/attested/document"
INSTANCE_PATH = "/instance"


class AzureAttestor:
    name = "azure"
    needs_challenge = True

    def __init__(self, base_url: str, *, probe_timeout: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = MetadataClient("Azure", base_url, transport=transport)
        self._probe_timeout = probe_timeout

    @classmethod
    def from_config(cls, config: AttestationConfig) -> AzureAttestor:
        return cls(config.azure_metadata_url, probe_timeout=config.probe_timeout)

    async def detect(self) -> bool:
        try:
            reply = await self._client.request(
                "GET", INSTANCE_PATH, headers=HEADERS, params={"api-version": API_VERSION},
                timeout=self._probe_timeout)
            body = reply.json()
        except (MetadataError, ValueError):
            return False
        return isinstance(body, dict) and isinstance(body.get("compute"), dict)

    async def evidence(self, challenge: str | None) -> Evidence:
        # Azure accepts at most 32 alphanumerics; the registrar's challenge is exactly that.
        if not challenge or not challenge.isalnum() or len(challenge) > 32:
            raise AttestError("Azure evidence needs a registrar challenge of <= 32 "
                              "alphanumerics", retryable=True)
        reply = await self._client.request(
            "GET", DOCUMENT_PATH, headers=HEADERS,
            params={"api-version": API_VERSION, "nonce": challenge})
        try:
            body = json.loads(reply.content)
            signature = body["signature"]
        except (ValueError, KeyError, TypeError):
            raise AttestError("Azure attested document reply is not {encoding, signature}",
                              retryable=True) from None
        if body.get("encoding", "pkcs7") != "pkcs7" or not isinstance(signature, str):
            raise AttestError("Azure attested document is not PKCS#7", retryable=False)
        return Evidence(type="azure", fields={"document": Secret(signature)})

    def spent(self) -> None:
        """Nothing to clean up: each document is bound to one challenge."""
