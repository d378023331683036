"""The SDS server Envoy asks for its workload certificate in Istio mode.

istiod's listeners and clusters name their TLS secrets ``default`` (our
certificate and key) and ``ROOTCA`` (the mesh roots), fetched over gRPC SDS
from a static cluster called ``sds-grpc`` -- the contract pilot-agent
fulfils. We fulfil it the same way: a gRPC server on a Unix socket that only
root, the agent and the proxy user can open, serving
``envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets`` (state of
the world) from the current credential generation and pushing every new
generation to each open stream. The messages are our own subset
(``wire/envoy_sds.proto``); the method is registered by name, so no
generated service code is needed.

Protocol, per stream: a request with new resource names (or the first) gets
the secrets it names that we have; a request carrying the last nonce and no
``error_detail`` is an ACK and gets nothing; one with ``error_detail`` is a
NACK, logged, and gets nothing (the same secrets would be refused again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.istio.wire import envoy_sds_pb2 as pb

if TYPE_CHECKING:
    import grpc.aio

log = logging.getLogger(__name__)

METHOD = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
CERT_NAME = "default"
ROOT_NAME = "ROOTCA"


@dataclass(frozen=True)
class SecretSet:
    """One credential generation as Envoy gets it."""

    version: str
    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes

    def secret(self, name: str) -> pb.Secret | None:
        if name == CERT_NAME:
            return pb.Secret(name=name, tls_certificate=pb.TlsCertificate(
                certificate_chain=pb.DataSource(inline_bytes=self.chain_pem),
                private_key=pb.DataSource(inline_bytes=self.key_pem)))
        if name == ROOT_NAME:
            return pb.Secret(name=name, validation_context=pb.CertificateValidationContext(
                trusted_ca=pb.DataSource(inline_bytes=self.bundle_pem)))
        return None

    def __repr__(self) -> str:  # never the key
        return f"SecretSet(version={self.version!r})"


class _Stream:
    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self.nonce = ""
        self.pending = False  # names changed: answer even if the version did not
        self.wake = asyncio.Event()


class SdsServer:
    """``start()``, ``update(secrets)`` (pushes), ``stop()``; one per agent."""

    def __init__(self, socket_path: Path, *, gid: int | None = None) -> None:
        self.socket_path = socket_path
        self._gid = gid
        self._secrets: SecretSet | None = None
        self._streams: set[_Stream] = set()
        self._server: grpc.aio.Server | None = None
        self._counter = 0

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        import grpc
        import grpc.aio

        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a socket left by a killed run
        self._server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.secret.v3.SecretDiscoveryService",
            {"StreamSecrets": grpc.stream_stream_rpc_method_handler(
                self._stream,
                request_deserializer=pb.DiscoveryRequest.FromString,
                response_serializer=pb.DiscoveryResponse.SerializeToString)})
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        await self._server.start()
        # Only the agent (owner) and the proxy user's group may connect.
        os.chmod(self.socket_path, 0o660)
        if self._gid is not None:
            os.chown(self.socket_path, os.geteuid(), self._gid)
        log.info("sds server listening", extra={"socket": str(self.socket_path)})

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def update(self, secrets: SecretSet) -> None:
        """Make ``secrets`` current and push them to every open stream."""
        self._secrets = secrets
        for stream in self._streams:
            stream.wake.set()

    def _response(self, stream: _Stream) -> pb.DiscoveryResponse | None:
        secrets = self._secrets
        if secrets is None:
            return None
        found = [s for s in (secrets.secret(n) for n in stream.names) if s is not None]
        if not found:
            return None
        self._counter += 1
        stream.nonce = f"{secrets.version}-{self._counter}"
        response = pb.DiscoveryResponse(version_info=secrets.version, type_url=SECRET_TYPE,
                                        nonce=stream.nonce)
        for secret in found:
            response.resources.add(type_url=SECRET_TYPE, value=secret.SerializeToString())
        return response

    async def _stream(self, requests: AsyncIterator[pb.DiscoveryRequest],
                      context: grpc.aio.ServicerContext[pb.DiscoveryRequest,
                                                        pb.DiscoveryResponse],
                      ) -> AsyncIterator[pb.DiscoveryResponse]:
        stream = _Stream()
        self._streams.add(stream)
        sent_version = ""
        reader = asyncio.ensure_future(self._read(requests, stream))
        try:
            while not reader.done() or stream.wake.is_set():
                waiter = asyncio.ensure_future(stream.wake.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not stream.wake.is_set():
                    continue
                stream.wake.clear()
                response = self._response(stream)
                if response is not None and (response.version_info != sent_version
                                             or stream.pending):
                    sent_version = response.version_info
                    stream.pending = False
                    yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)

    async def _read(self, requests: AsyncIterator[pb.DiscoveryRequest], stream: _Stream) -> None:
        async for request in requests:
            if request.type_url and request.type_url != SECRET_TYPE:
                log.warning("sds: request for another type", extra={"type_url": request.type_url})
                continue
            if request.HasField("error_detail"):
                log.error("envoy rejected a secret", extra={
                    "names": ",".join(request.resource_names),
                    "error": request.error_detail.message[:300]})
                continue
            names = tuple(sorted(set(request.resource_names)))
            if request.response_nonce and request.response_nonce == stream.nonce \
                    and names == stream.names:
                continue  # ACK
            stream.names = names
            stream.pending = True
            stream.wake.set()
