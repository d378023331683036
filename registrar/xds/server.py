"""The thin gRPC shell: ADS (``StreamAggregatedResources``, state-of-the-world) over mTLS.

Who may connect: gRPC verifies the client certificate chains to the
registrar's roots; then the certificate must be one the inventory issued to
an active workload, and the first request's ``node.id`` must equal the
certificate's SPIFFE ID (URI SAN). Anything else ends the stream with
PERMISSION_DENIED before a single resource is sent, so a node can never obtain
another workload's view. (Secrets are never served: Envoy reads them from the
agent's local files.)

The node's ``metadata.SDS_DIR`` (the agent's ``<state_dir>/envoy/sds``) says
where its SDS documents are; it only shapes that node's own resources.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from registrar.api.connections import HANDSHAKE_SECONDS
from registrar.xds.hub import Hub
from registrar.xds.resources import DEFAULT_SDS_DIR, NodeFiles
from registrar.xds.session import Session
from registrar.xds.status import StreamRow, XdsStatus

log = logging.getLogger("registrar.xds")
_SDS_DIR = re.compile(r"^/[A-Za-z0-9._/-]{1,255}$")
# Is this certificate (serial hex) an active workload's, with this SPIFFE ID?
Authorizer = Callable[[str, str], str | None]


class Denied(Exception):
    pass


def peer_spiffe_id(context: grpc.aio.ServicerContext[Any, Any],
                   authorize: Authorizer) -> str:
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise Denied("no client certificate")
    cert = x509.load_pem_x509_certificate(next(iter(pems)))
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise Denied("client certificate has no single SPIFFE ID")
    problem = authorize(format(cert.serial_number, "x"), uris[0])
    if problem is not None:
        raise Denied(problem)
    return uris[0]


def node_files(request: DiscoveryRequest) -> NodeFiles:
    field = request.node.metadata.fields.get("SDS_DIR")
    value = field.string_value if field is not None else ""
    return NodeFiles(value if _SDS_DIR.match(value) and ".." not in value else DEFAULT_SDS_DIR)


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, hub: Hub, status: XdsStatus, authorize: Authorizer) -> None:
        self._hub = hub
        self._status = status
        self._authorize = authorize
        self._ids = itertools.count(1)

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, DiscoveryResponse],
    ) -> None:
        peer = context.peer()
        try:
            spiffe_id = peer_spiffe_id(context, self._authorize)
            first = await anext(request_iterator)
            if first.node.id != spiffe_id:
                # The client hears its own node.id back; the log gets only our facts.
                self._status.count("refused")
                log.warning("xds refused peer=%s: node.id is not the certificate's %s",
                            peer, spiffe_id)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"node.id {first.node.id[:200]!r} is not the "
                                    f"certificate's {spiffe_id}")
                return
        except (Denied, StopAsyncIteration) as exc:
            self._status.count("refused")
            log.warning("xds refused peer=%s: %s", peer, exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            return
        row = StreamRow(str(next(self._ids)), spiffe_id, peer, time.time())
        session = Session(self._hub, self._status, (spiffe_id, node_files(first)), context, row)
        try:
            await session.handle(first)
            # The first request carries Envoy's whole node (build, extensions: tens of
            # KiB as a message); once handled nothing may keep it for the stream's life.
            del first
            async for request in request_iterator:
                await session.handle(request)
        finally:
            session.close()


# Per-connection buffers, sized for xDS rather than bulk transfer: a push is a few
# KiB and an ACK a few hundred bytes, yet by default each mTLS connection keeps a
# 16 KiB TLS frame buffer and a read buffer that BDP probing grows. TLS frames of
# 1 KiB and reads of at most 4 KiB (instead of 4 and 16) saved a further 3 KiB of
# RSS per connection with no measurable cost in push time (scripts/bench/xds_push.py,
# 1,000 connections: the heap in use, glibc's mallinfo2, 109.6 -> 106.8 KiB each).
MEMORY_OPTIONS = (
    ("grpc.tsi.max_frame_size", 1024),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.experimental.tcp_read_chunk_size", 2048),
    ("grpc.experimental.tcp_max_read_chunk_size", 4096),
    ("grpc.enable_channelz", 0),
    ("grpc.http2.hpack_table_size.decoder", 512),
)



ServerPems = tuple[bytes, bytes, bytes]  # certificate chain, key, client roots


def rotating_credentials(initial: ServerPems,
                         changed: Callable[[], ServerPems | None]) -> grpc.ServerCredentials:
    """Credentials gRPC asks ``changed`` about before each handshake (None: keep), so
    a CA rotation's server certificate and roots apply without a restart."""
    def configuration(pems: ServerPems) -> grpc.ServerCertificateConfiguration:
        cert, key, roots = pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], roots)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        pems = changed()
        return None if pems is None else configuration(pems)

    # gRPC documents None as "no change"; the stubs do not allow it.
    return grpc.dynamic_ssl_server_credentials(
        configuration(initial), fetch,  # type: ignore[arg-type]
        require_client_authentication=True)


async def start(hub: Hub, status: XdsStatus, authorize: Authorizer, address: str,
                credentials: grpc.ServerCredentials) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        # A TLS handshake must finish within 10 s, as on the HTTPS API (gRPC's
        # default is 120 s): a connection that never completes one is closed.
        ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_SECONDS * 1000)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_concurrent_streams", 16),
        *MEMORY_OPTIONS,
    ])
    # Registered by hand rather than with xds-protos' helper: responses are bytes
    # already serialized (registrar/xds/wire.py), so the serializer is the identity.
    servicer = AdsServicer(hub, status, authorize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "envoy.service.discovery.v3.AggregatedDiscoveryService",
        {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=DiscoveryRequest.FromString,
            response_serializer=bytes)}),))
    server.add_secure_port(address, credentials)
    await server.start()
    return server
