"""HTTP to a cloud metadata service: the one boundary where httpx errors become
``AttestError``s.

Metadata servers are link-local and answer in milliseconds, so timeouts are
tight; redirects are never followed (a metadata server does not redirect, and
following one could send a metadata token elsewhere); replies are size-bounded.
Error messages carry the service, method, path and status, never bodies or
headers (those hold tokens and identity documents).
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from agent.attest.base import AttestError

# Identity documents and tokens are a few KiB; anything larger is not one.
MAX_REPLY_BYTES = 64 * 1024
# Per request while collecting evidence; probes use the shorter probe_timeout.
EVIDENCE_TIMEOUT = 5.0


class MetadataError(AttestError):
    """A metadata request failed. ``status`` is the HTTP status when one came back."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.timed_out = timed_out


class MetadataClient:
    """Requests to one metadata base URL. Cheap to construct; one connection per call."""

    def __init__(self, service: str, base_url: str, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float = EVIDENCE_TIMEOUT) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self._timeout = timeout

    async def request(self, method: str, path: str, *, headers: Mapping[str, str],
                      params: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> httpx.Response:
        url = f"{self.base_url}{path}"
        where = f"{self.service} metadata {method} {url}"
        # trust_env=False: a proxy from the environment must never see metadata traffic.
        try:
            async with httpx.AsyncClient(transport=self._transport, follow_redirects=False,
                                         trust_env=False,
                                         timeout=timeout or self._timeout) as client:
                reply = await client.request(method, url, headers=dict(headers),
                                             params=dict(params or {}))
        except httpx.TimeoutException:
            raise MetadataError(f"{where}: timed out", retryable=True,
                                timed_out=True) from None
        except httpx.HTTPError as exc:
            raise MetadataError(f"{where}: {type(exc).__name__}", retryable=True) from None
        except OSError as exc:
            raise MetadataError(f"{where}: {exc.strerror or exc}", retryable=True) from None
        if len(reply.content) > MAX_REPLY_BYTES:
            raise MetadataError(f"{where}: reply larger than {MAX_REPLY_BYTES} bytes",
                                retryable=False, status=reply.status_code)
        if reply.status_code != 200:
            raise MetadataError(f"{where}: HTTP {reply.status_code}",
                                retryable=reply.status_code >= 500 or reply.status_code == 429,
                                status=reply.status_code)
        return reply
