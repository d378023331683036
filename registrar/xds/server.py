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

import asyncio
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

from registrar.display import printable
from registrar.xds.hub import Hub, Key
from registrar.xds.resources import DEFAULT_SDS_DIR, NodeFiles
from registrar.xds.status import StreamRow, XdsStatus
from registrar.xds.stream import AdsStream, Reply

log = logging.getLogger("registrar.xds")
_SDS_DIR = re.compile(r"^/[A-Za-z0-9._/-]{1,255}$")
# Is this certificate (serial hex) an active workload's, with this SPIFFE ID?
Authorizer = Callable[[str, str], str | None]
_WAKE = object()


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


class _Inbox:
    """A stream's queue of requests and wake-ups; at most one wake-up is ever queued."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self._woken = False

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            self.queue.put_nowait(_WAKE)

    async def get(self) -> object:
        item = await self.queue.get()
        if item is _WAKE:
            self._woken = False
        return item


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
        key = (spiffe_id, node_files(first))
        inbox = _Inbox()
        inbox.queue.put_nowait(first)
        # The first request carries Envoy's whole node (build, extensions: tens of KiB
        # as a message); once handled nothing may keep it for the stream's lifetime.
        del first
        await self._serve(context, request_iterator, inbox, key, peer)

    async def _serve(self, context: grpc.aio.ServicerContext[DiscoveryRequest, Any],
                     requests: AsyncIterator[DiscoveryRequest], inbox: _Inbox, key: Key,
                     peer: str) -> None:
        spiffe_id = key[0]
        stream = AdsStream(spiffe_id)
        row = StreamRow(str(next(self._ids)), spiffe_id, peer, time.time())

        async def read() -> None:
            async for request in requests:
                inbox.queue.put_nowait(request)
            inbox.queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        self._hub.watch(key, inbox)
        self._status.opened(row)
        log.info("xds stream %s opened node=%s peer=%s", row.stream_id, spiffe_id, peer)
        current = self._hub.snapshot(key)
        try:
            while True:
                item = await inbox.get()
                if item is None:
                    break
                if item is _WAKE:
                    new = self._hub.snapshot(key)
                    responses = stream.on_snapshot(current, new)
                    current = new
                else:
                    assert isinstance(item, DiscoveryRequest)
                    responses = self._on_request(stream, row, item, current)
                for reply in responses:
                    self._status.count("push", reply.type_url)
                    await context.write(reply.data)
        finally:
            reader.cancel()
            self._hub.unwatch(key, inbox)
            self._status.closed(row.stream_id)
            log.info("xds stream %s closed node=%s", row.stream_id, spiffe_id)

    def _on_request(self, stream: AdsStream, row: StreamRow, request: DiscoveryRequest,
                    current: Any) -> list[Reply]:
        before = stream.types.get(request.type_url)
        acked_before = before.acked_version if before else None
        responses, nack = stream.on_request(request, current)
        state = stream.types.get(request.type_url)
        if nack is not None:
            row.nacks += 1
            row.last_nack = f"{nack.type_url} version {nack.version}: {nack.message[:500]}"
            self._status.count("nack", nack.type_url)
            self._status.changed(row.stream_id)
            self._status.flush(time.time())  # a NACK is visible at once
            # The type, version and message are the client's: escaped to one line.
            log.warning("xds NACK node=%s: %s", row.node_id, printable(row.last_nack))
        elif state is not None and state.acked_version != acked_before and state.acked_version:
            row.acked[request.type_url.rsplit(".", 1)[-1]] = state.acked_version
            self._status.count("ack", request.type_url)
            self._status.changed(row.stream_id)
        return responses


# Per-connection buffers, sized for xDS rather than bulk transfer: a push is a few
# KiB and an ACK a few hundred bytes, yet by default each mTLS connection keeps a
# 16 KiB TLS frame buffer and a read buffer that BDP probing grows. Smaller ones
# cost nothing measurable in push time (scripts/bench/xds_push.py).
MEMORY_OPTIONS = (
    ("grpc.tsi.max_frame_size", 4096),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.experimental.tcp_read_chunk_size", 2048),
    ("grpc.experimental.tcp_max_read_chunk_size", 16384),
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
