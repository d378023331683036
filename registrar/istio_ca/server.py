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

import asyncio
import logging
import math
import ssl
from collections.abc import Callable
from typing import Any

from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from meshcore.clock import Clock
from meshcore.istio_wire import istio_ca_pb2 as pb
from registrar.api.connections import HANDSHAKE_SECONDS, ConnectionGate
from registrar.api.logbudget import LogBudget
from registrar.api.protocol import Guarded
from registrar.api.ratelimit import TokenBucket
from registrar.api.tls import RefusingTls
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


class _GatedServer(Server):
    """grpclib's server with each connection's protocol wrapped: TLS terminated by
    ``RefusingTls`` (the handshake bounded by ``HANDSHAKE_SECONDS``, a refused one
    gets its alert and a line) around the worker's connection gate, as the HTTPS
    API's connections are. Without it a flood of silent connections on this port
    could hold the worker's files, and the API shares them."""

    def __init__(self, service: IstioCaService,
                 wrap: Callable[[asyncio.Protocol], asyncio.BaseProtocol]) -> None:
        super().__init__([service])
        self._wrap = wrap

    def _protocol_factory(self) -> Any:
        # grpclib's factory (one Handler per connection, tracked for close()) is
        # pinned in constraints.txt; tests/registrar/istio_ca/test_ca_connections.py
        # fails if a connection stops going through the gate or the handshake bound.
        return self._wrap(super()._protocol_factory())


async def start(service: IstioCaService, *, host: str, port: int, ssl_context: ssl.SSLContext,
                reuse_port: bool, gate: ConnectionGate,
                log_budget: LogBudget | None = None) -> Server:
    loop = asyncio.get_running_loop()

    def wrap(h2: asyncio.Protocol) -> asyncio.BaseProtocol:
        return RefusingTls(loop, Guarded(h2, gate, None, log_budget), ssl_context,
                           handshake_timeout=HANDSHAKE_SECONDS, log_budget=log_budget)

    server = _GatedServer(service, wrap)
    # No ssl= here: TLS is each connection's own protocol (wrap).
    await server.start(host, port, reuse_port=reuse_port or None, backlog=1024)
    log.info("istio_ca serving grpcs://%s:%d", host, port)
    return server
