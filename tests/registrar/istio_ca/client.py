"""A CreateCertificate caller for tests and benchmarks: grpcio, as Go's and the
agent's clients speak it (TLS verified against the registrar's root, ALPN h2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from meshcore.istio_wire import istio_ca_pb2 as pb

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str = ""
    reason: str = ""
    chain: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


def create(target: str, roots: bytes, csr: str, *, token: str | None = None,
           cert: bytes | None = None, key: bytes | None = None, validity: int = 0,
           metadata: dict[str, str] | None = None, server_name: str = "127.0.0.1",
           authorization: str | None = None, timeout: float = 30) -> Answer:
    creds = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                         certificate_chain=cert)
    headers: list[tuple[str, str]] = [("clusterid", "Kubernetes")]
    if token is not None:
        authorization = f"Bearer {token}"
    if authorization is not None:
        headers.append(("authorization", authorization))
    request = pb.IstioCertificateRequest(csr=csr, validity_duration=validity)
    if metadata:
        request.metadata.update(metadata)
    with grpc.secure_channel(target, creds, options=[
            ("grpc.ssl_target_name_override", server_name)]) as channel:
        call = channel.unary_unary(METHOD,
                                   request_serializer=pb.IstioCertificateRequest.SerializeToString,
                                   response_deserializer=pb.IstioCertificateResponse.FromString)
        try:
            response = call(request, metadata=headers, timeout=timeout)
        except grpc.RpcError as exc:
            trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
            return Answer(exc.code(), exc.details() or "",  # type: ignore[attr-defined]
                          str(trailers.get("x-mesh-reason", "")))
    return Answer(grpc.StatusCode.OK, chain=list(response.cert_chain))
