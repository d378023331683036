"""EC2 attestor: IMDSv2 only (session token first), identity document + rsa2048 PKCS#7.

IMDSv1 is never tried: an agent that fell back to it would teach operators to
leave it enabled. The session token lives for ``TOKEN_TTL`` seconds and only in
memory, as a ``Secret``; a 401 means it went stale, so one fresh PUT is retried.
"""

from __future__ import annotations

import base64

import httpx

from agent.attest.base import AttestError, Evidence
from agent.attest.config import AttestationConfig
from agent.attest.metadata import MetadataClient, MetadataError
from meshcore.secret import Secret

TOKEN_PATH = "/latest/api/token"  # noqa: S105 (a URL path, not a secret)
DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
PKCS7_PATH = "/latest/dynamic/instance-identity/rsa2048"
TOKEN_TTL = 60
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 (a header name)


class AwsAttestor:
    name = "aws"
    needs_challenge = False

    def __init__(self, base_url: str, *, probe_timeout: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = MetadataClient("EC2", base_url, transport=transport)
        self._probe_timeout = probe_timeout

    @classmethod
    def from_config(cls, config: AttestationConfig) -> AwsAttestor:
        return cls(config.aws_metadata_url, probe_timeout=config.probe_timeout)

    async def detect(self) -> bool:
        try:
            await self._token(timeout=self._probe_timeout)
        except AttestError:
            return False
        return True

    async def _token(self, *, timeout: float | None = None) -> Secret:
        try:
            reply = await self._client.request("PUT", TOKEN_PATH,
                                               headers={TTL_HEADER: str(TOKEN_TTL)},
                                               timeout=timeout)
        except MetadataError as exc:
            if exc.timed_out:
                raise MetadataError(
                    f"{exc}: no reply to the IMDSv2 token PUT. If the agent runs in a "
                    "container or network namespace, the instance's metadata hop limit "
                    "(HttpPutResponseHopLimit, default 1) drops the reply; raise it to 2 "
                    "with `aws ec2 modify-instance-metadata-options`", retryable=True,
                    timed_out=True) from None
            raise
        token = reply.text.strip()
        if not token:
            raise AttestError("IMDSv2 token PUT returned an empty token", retryable=True)
        return Secret(token)

    async def _get(self, path: str, token: Secret) -> tuple[str, Secret]:
        try:
            reply = await self._client.request("GET", path,
                                               headers={TOKEN_HEADER: token.reveal()})
        except MetadataError as exc:
            if exc.status != 401:
                raise
            token = await self._token()  # went stale between calls: renew once
            reply = await self._client.request("GET", path,
                                               headers={TOKEN_HEADER: token.reveal()})
        return reply.text, token

    async def evidence(self, challenge: str | None) -> Evidence:
        token = await self._token()
        document, token = await self._get(DOCUMENT_PATH, token)
        pkcs7, _ = await self._get(PKCS7_PATH, token)
        if not document.strip().startswith("{") or not pkcs7.strip():
            raise AttestError("EC2 identity document or signature is empty or malformed",
                              retryable=True)
        # The document goes base64 so the registrar sees exactly the bytes AWS signed.
        encoded = base64.b64encode(document.encode()).decode("ascii")
        return Evidence(type="aws", fields={"document": Secret(encoded),
                                            "pkcs7": Secret(pkcs7.strip())})

    def spent(self) -> None:
        """Nothing to clean up; re-attestation is the registrar's policy (evict)."""
