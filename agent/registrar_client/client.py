"""The registrar client, always verifying the registrar against the pinned trust
anchor; renewals present the current certificate (mTLS) and need no evidence.

The TLS context is built once per anchor file, held bundle and client
certificate (each is identified by its file's inode, size and mtime, so a
changed or removed file is seen at the next call), and calls made with the
same client certificate share one kept-alive connection (``http.TlsHttp``),
except renewals, which verify the registrar on a new connection each time."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.attest.base import Evidence
from agent.registrar_client.errors import RegistrarError, from_response, from_transport
from agent.registrar_client.http import ProtocolError, TlsHttp, TooLarge
from agent.registrar_client.wire import Issued, WireError, decode_issued
from agent.registrar_client.workload import WorkloadSettings, decode_settings
from meshcore.secret import Secret

# The mesh bundle the agent holds now (PEM), or None: trusted beside the pinned anchor.
ExtraAnchors = Callable[[], bytes | None]
MAX_RESPONSE_BYTES = 1 << 20


@dataclass(frozen=True)
class Bundle:
    version: int | None
    pem: bytes


class RegistrarClient:
    """``attest``, ``renew``, ``challenge``, ``bundle``; errors are ``RegistrarError``."""

    def __init__(self, url: str, ca_file: Path, *, timeout: float,
                 user_agent: str = "mesh-agent",
                 extra_anchors: ExtraAnchors | None = None) -> None:
        """``extra_anchors``: after a CA rotation the registrar's own certificate is
        signed by the new root, which reached the agent in the bundle over a
        connection verified against the anchor; trusting the bundle too keeps the
        agent talking to its registrar without editing ``ca_file``."""
        self.url = url.rstrip("/")
        self._extra_anchors = extra_anchors
        self.ca_file = ca_file
        parts = urlsplit(self.url)
        self._base_path = parts.path
        self._http = TlsHttp(parts.hostname or "", parts.port or 443, timeout=timeout,
                             max_body=MAX_RESPONSE_BYTES, user_agent=user_agent)
        # client certificate (or None) -> (what the context was built from, context)
        self._contexts: dict[object, tuple[object | None, ssl.SSLContext]] = {}
        # The Date header of the last answer (any status): the registrar's clock.
        self.last_date: dt.datetime | None = None

    def close(self) -> None:
        """Close the kept connection(s); later calls still work, each on a new one."""
        self._http.close()

    def _unreadable(self, exc: Exception) -> RegistrarError:
        return RegistrarError("fatal", "trust_anchor_unreadable",
                              f"cannot load the registrar trust anchor {self.ca_file}: {exc}",
                              url=self.url)

    def _context(self, client_cert: tuple[Path, Path] | None
                 ) -> tuple[object | None, ssl.SSLContext]:
        """The context for ``client_cert`` and its identity (the pool key): rebuilt
        only when the anchor file, the held bundle or the certificate files changed."""
        extra = self._extra_anchors() if self._extra_anchors is not None else None
        try:
            anchor = _file_id(self.ca_file)
        except OSError as exc:
            raise self._unreadable(exc) from None
        try:
            cert = tuple(_file_id(p) for p in client_cert) if client_cert else None
        except OSError:
            # A certificate file is missing: never cached; load_cert_chain says why.
            return None, self._build(client_cert, extra)
        signature = (anchor, hashlib.sha256(extra).digest() if extra else None, cert)
        held = self._contexts.get(client_cert)
        if held is not None and held[0] == signature:
            return held
        ctx = self._build(client_cert, extra)
        self._contexts[client_cert] = (signature, ctx)
        return signature, ctx

    def _build(self, client_cert: tuple[Path, Path] | None, extra: bytes | None
               ) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise self._unreadable(exc) from None
        if extra:
            # A bundle that does not load leaves the pinned anchor alone in force.
            with contextlib.suppress(ssl.SSLError, ValueError):
                ctx.load_verify_locations(cadata=extra.decode("ascii", "replace"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # Python 3.13 sets this by default; setting it everywhere means a registrar
        # certificate that Debian 13 would refuse is refused on every Python alike.
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        if client_cert is not None:
            chain, key = client_cert
            ctx.load_cert_chain(certfile=str(chain), keyfile=str(key))
        return ctx

    async def _call(self, method: str, path: str, body: dict[str, Any] | None,
                    client_cert: tuple[Path, Path] | None = None,
                    headers: dict[str, str] | None = None, *, keep: bool = True) -> Any:
        """``keep``: may use and keep the connection of this certificate. Only mTLS
        calls do: an unauthenticated call (a token attestation spends the token)
        is never sent twice."""
        signature, ctx = self._context(client_cert)
        url = f"{self.url}{path}"
        pool_key = (signature if keep and client_cert is not None and signature is not None
                    else None)
        payload = json.dumps(body).encode() if body is not None else None
        try:
            response = await self._http.request(method, f"{self._base_path}{path}", url,
                                                ctx=ctx, pool_key=pool_key, body=payload,
                                                headers=headers)
        except TooLarge as exc:
            raise RegistrarError("retry", "response_too_large", str(exc), url=url) from None
        except ProtocolError as exc:
            raise RegistrarError("retry", "bad_response", str(exc), url=url) from None
        except (OSError, TimeoutError) as exc:
            raise from_transport(exc, url, ca_file=str(self.ca_file),
                                 mtls=client_cert is not None) from None
        self.last_date = _http_date(response.headers.get("date"))
        if response.status == 304 and headers and "if-none-match" in headers:
            return None
        if response.status != 200:
            raise from_response(response)
        try:
            return json.loads(response.content)
        except ValueError:
            raise RegistrarError("retry", "bad_response", "answer is not JSON", url=url) from None

    async def challenge(self) -> str:
        body = await self._call("POST", "/v1/challenge", {})
        nonce = body.get("nonce") if isinstance(body, dict) else None
        if not isinstance(nonce, str):
            raise RegistrarError("retry", "bad_response", "challenge without nonce", url=self.url)
        return nonce

    async def attest(self, evidence: Evidence, csr_pem: bytes, *, challenge: str | None,
                     hostname: str, addresses: Sequence[str]) -> Issued:
        body: dict[str, Any] = {"evidence": evidence.wire(), "csr": csr_pem.decode(),
                                "hostname": hostname, "addresses": list(addresses)}
        if challenge is not None:
            body["challenge"] = challenge
        return self._decode(await self._call("POST", "/v1/attest", body))

    async def renew(self, csr_pem: bytes, *, chain_file: Path, key_file: Path,
                    hostname: str, addresses: Sequence[str]) -> Issued:
        body = {"csr": csr_pem.decode(), "hostname": hostname, "addresses": list(addresses)}
        # A renewal verifies the registrar anew (its own certificate, against the
        # anchors held now) on a connection of its own: it is what keeps the
        # identity alive, so it never rides on a connection made hours ago.
        return self._decode(await self._call("POST", "/v1/renew", body,
                                             client_cert=(chain_file, key_file), keep=False))

    async def bundle(self) -> bytes:
        body = await self._call("GET", "/v1/bundle", None)
        pem = body.get("trust_bundle") if isinstance(body, dict) else None
        if not isinstance(pem, str):
            raise RegistrarError("retry", "bad_response", "bundle missing", url=self.url)
        return pem.encode()

    async def poll_bundle(self, *, known_version: int | None,
                          client_cert: tuple[Path, Path] | None) -> Bundle | None:
        """The bundle if it changed since ``known_version`` (None: unchanged, 304).
        With ``client_cert`` the registrar records that this workload has it."""
        headers = {"if-none-match": f'"{known_version}"'} if known_version is not None else {}
        body = await self._call("GET", "/v1/bundle", None, client_cert=client_cert,
                                headers=headers)
        if body is None:
            return None
        pem = body.get("trust_bundle") if isinstance(body, dict) else None
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(pem, str) or not (version is None or isinstance(version, int)):
            raise RegistrarError("retry", "bad_response", "bundle missing", url=self.url)
        return Bundle(version, pem.encode())

    async def workload_status(self, *, addresses: Sequence[str], health: str,
                              chain_file: Path, key_file: Path) -> None:
        """Report addresses and health (mTLS with the workload certificate)."""
        await self._call("POST", "/v1/workload/status",
                         {"addresses": list(addresses), "health": health},
                         client_cert=(chain_file, key_file))

    async def workload_settings(self, *, chain_file: Path, key_file: Path) -> WorkloadSettings:
        """The group's probe, the reporting interval, the DNS name table, the xDS port."""
        body = await self._call("GET", "/v1/workload/settings", None,
                                client_cert=(chain_file, key_file))
        try:
            return decode_settings(body)
        except WireError as exc:
            raise RegistrarError("retry", "bad_response", str(exc), url=self.url) from None

    async def oidc_token(self, *, chain_file: Path, key_file: Path,
                         audience: str | None = None) -> tuple[Secret, int]:
        """A JWT for this workload's own identity (mTLS), and its lifetime in seconds."""
        request: dict[str, Any] = {} if audience is None else {"audience": audience}
        body = await self._call("POST", "/v1/oidc/token", request,
                                client_cert=(chain_file, key_file))
        token = body.get("token") if isinstance(body, dict) else None
        lifetime = body.get("expires_in") if isinstance(body, dict) else None
        if not isinstance(token, str) or not isinstance(lifetime, int):
            raise RegistrarError("retry", "bad_response", "token answer without token",
                                 url=self.url)
        return Secret(token), lifetime

    def _decode(self, body: Any) -> Issued:
        try:
            return decode_issued(body)
        except WireError as exc:
            raise RegistrarError("retry", "bad_response", str(exc), url=self.url) from None


def _file_id(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _http_date(value: str | None) -> dt.datetime | None:
    """An HTTP date (RFC 9110 IMF-fixdate, what the registrar sends), or None."""
    if value is None:
        return None
    try:
        return dt.datetime.strptime(value, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
