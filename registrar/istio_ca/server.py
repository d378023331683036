"""The thin gRPC shell: ``istio.v1.auth.IstioCertificateService/CreateCertificate``
over TLS on its own port, served by every API worker beside the HTTPS API.

grpclib (HTTP/2 and gRPC framing in Python, on this worker's event loop) rather
than grpcio, whose Python server can either require a client certificate or not
ask for one: this port takes both a bearer token and mTLS, like istiod's 15012.
TLS is the registrar's own context (TLS 1.3, no resumption, client certificates
optional and verified against the current CA's roots; it follows ``ca rotate``),
offering ALPN ``h2`` as gRPC clients require.

Order per call: rate limit, authentication (headers and TLS only), then the
body is read and the CSR checked. One log line per decision with the SPIFFE ID,
how the caller proved it, the serial and the expiry; never the token.
"""

from __future__ import annotations

import logging
import math
import ssl
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from meshcore.clock import Clock
from meshcore.istio_wire import istio_ca_pb2 as pb
from registrar.api.ratelimit import TokenBucket
from registrar.ca.authority import AuthoritySource
from registrar.config import Rate
from registrar.istio_ca.callers import Callers
from registrar.istio_ca.config import IstioCaConfig
from registrar.istio_ca.refusals import REASON_TRAILER, Refused
from registrar.istio_ca.signing import IMPERSONATION_KEY, sign

log = logging.getLogger("registrar.decisions")
METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
Request = pb.IstioCertificateRequest
Response = pb.IstioCertificateResponse


class IstioCaService:
    def __init__(self, *, config: IstioCaConfig, callers: Callers,
                 authorities: AuthoritySource, clock: Clock) -> None:
        self._callers = callers
        self._authorities = authorities
        self._bucket = TokenBucket(Rate(config.per_second, config.burst), clock)

    def __mapping__(self) -> dict[str, Handler]:
        return {METHOD: Handler(self.create_certificate, Cardinality.UNARY_UNARY,
                                Request, Response)}

    async def create_certificate(self, stream: Stream[Request, Response]) -> None:
        addr = stream.peer.addr()
        remote = str(addr[0]) if addr else "-"
        try:
            wait = self._bucket.take()
            if wait > 0.0:
                raise Refused("rate_limited", "CreateCertificate calls over the limit; retry "
                              f"in {max(1, math.ceil(wait))}s")
            auth = stream.metadata.get("authorization") if stream.metadata else None
            caller = self._callers.identify(stream.peer.cert(),
                                            auth if isinstance(auth, str) else None)
            request = await stream.recv_message()
            if request is None:
                raise Refused("csr_invalid", "no request message")
            impersonate = request.metadata.fields.get(IMPERSONATION_KEY)
            signed = sign(self._authorities.authority(), caller, request.csr,
                          request.validity_duration,
                          impersonate.string_value if impersonate is not None else None)
        except Refused as exc:
            log.info("istio_ca refused reason=%s remote=%s%s", exc.reason, remote,
                     f" {exc.logged}" if exc.logged else "")
            await stream.send_trailing_metadata(
                status=exc.status, status_message=f"{exc.reason}: {exc.message}"[:1000],
                metadata={REASON_TRAILER: exc.reason})
            return
        log.info("istio_ca ok spiffe_id=%s by=%s %s serial=%s not_after=%d remote=%s",
                 caller.spiffe_id, caller.how, caller.logged, signed.serial_hex,
                 signed.not_after, remote)
        await stream.send_message(Response(cert_chain=signed.cert_chain))


async def start(service: IstioCaService, *, host: str, port: int, ssl_context: ssl.SSLContext,
                reuse_port: bool) -> Server:
    server = Server([service])
    options: dict[str, Any] = {"ssl": ssl_context, "reuse_port": reuse_port or None,
                               "backlog": 1024}
    await server.start(host, port, **options)
    log.info("istio_ca serving grpcs://%s:%d", host, port)
    return server
