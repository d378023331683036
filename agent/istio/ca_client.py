"""istiod's CA over gRPC: ``istio.v1.auth.IstioCertificateService/CreateCertificate``.

A first certificate is asked for with the istio-token (``authorization:
Bearer``) over TLS verified against root-cert.pem only. Renewals present
the current certificate instead (mTLS): istiod's client-certificate
authenticator is tried before the token one, so a VM whose one-hour token
has long expired keeps renewing for as long as its certificate is valid.

grpcio is imported here, lazily, so static mode never loads it. Every failure
becomes a ``RegistrarError`` (the issuer error) with an action:

| gRPC outcome | reason | action |
| --- | --- | --- |
| UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL... | ``unreachable``, ``timeout``... | retry |
| istiod's certificate fails root-cert.pem | ``istiod_untrusted`` | fatal, exit 78 |
| UNAUTHENTICATED on a first certificate | ``istio_token_rejected`` | fatal, exit 79 |
| the same, token from mesh-registrar | ``registrar_token_rejected`` | retry (fresh token) |
| UNAUTHENTICATED on a renewal | ``client_cert_rejected`` | reattest (token, if valid) |
| anything else (INVALID_ARGUMENT: bad CSR...) | ``ca_refused_<code>`` | fatal |
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from agent.attest.base import Evidence
from agent.istio.probe import tls_verify_error
from agent.istio.vm import IstioVM
from agent.registrar_client.errors import RegistrarError
from agent.registrar_client.wire import Issued
from meshcore.secret import Secret

if TYPE_CHECKING:
    import grpc

METHOD = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
_RETRY_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL",
                "ABORTED", "UNKNOWN", "CANCELLED")


class IstioCAClient:
    """``attest`` (istio-token) and ``renew`` (mTLS); the ``IssuerClient`` of Istio mode."""

    def __init__(self, vm: IstioVM, *, cert_ttl: float, timeout: float,
                 token_from_registrar: bool = False) -> None:
        self.vm = vm
        self._token_from_registrar = token_from_registrar
        # The trust anchor (IssuerClient): istiod is verified against root-cert.pem.
        self.ca_file = vm.directory / "root-cert.pem"
        # gRPC answers carry no Date header: no clock-offset reading in Istio mode.
        self.last_date: dt.datetime | None = None
        self._ttl = int(cert_ttl)
        self._timeout = timeout

    @property
    def url(self) -> str:
        return f"grpcs://{self.vm.ca}"

    @property
    def target(self) -> str:
        """What we dial: the hosts file's address for the CA's name, same port."""
        ip = self.vm.resolve(self.vm.ca)
        return f"[{ip}]:{self.vm.ca.port}" if ":" in ip else f"{ip}:{self.vm.ca.port}"

    async def challenge(self) -> str:
        raise RegistrarError("fatal", "unsupported", "istiod's CA has no challenge",
                             url=self.url)

    async def attest(self, evidence: Evidence, csr_pem: bytes, *, challenge: str | None,
                     hostname: str, addresses: Sequence[str]) -> Issued:
        token = evidence.fields.get("token")
        if not isinstance(token, Secret):
            raise RegistrarError("fatal", "no_token", "no istio-token to present", url=self.url)
        return await self._create(csr_pem, token=token, client_cert=None)

    async def renew(self, csr_pem: bytes, *, chain_file: Path, key_file: Path,
                    hostname: str, addresses: Sequence[str]) -> Issued:
        try:
            pair = (chain_file.read_bytes(), key_file.read_bytes())
        except OSError as exc:
            raise RegistrarError("reattest", "client_cert_unreadable",
                                 f"cannot read the current certificate: {exc.strerror}",
                                 url=self.url) from None
        return await self._create(csr_pem, token=None, client_cert=pair)

    async def _create(self, csr_pem: bytes, *, token: Secret | None,
                      client_cert: tuple[bytes, bytes] | None) -> Issued:
        import grpc
        import grpc.aio

        from meshcore.istio_wire import istio_ca_pb2 as pb

        chain, key = client_cert if client_cert is not None else (None, None)
        creds = grpc.ssl_channel_credentials(root_certificates=self.vm.root_pem,
                                             private_key=key, certificate_chain=chain)
        metadata: list[tuple[str, str]] = [("clusterid", self.vm.cluster_id)]
        if token is not None:
            metadata.append(("authorization", f"Bearer {token.reveal()}"))
        request = pb.IstioCertificateRequest(csr=csr_pem.decode(), validity_duration=self._ttl)
        try:
            async with grpc.aio.secure_channel(self.target, creds,
                                               options=self._options()) as channel:
                call = channel.unary_unary(
                    METHOD, request_serializer=pb.IstioCertificateRequest.SerializeToString,
                    response_deserializer=pb.IstioCertificateResponse.FromString)
                response = await call(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise await self._classify(exc, renewal=client_cert is not None) from None
        return self._issued(list(response.cert_chain))

    def _options(self) -> list[tuple[str, Any]]:
        # Dial the address, verify the name: istiod's serving certificate names
        # istiod.<ns>.svc, which the VM usually cannot resolve.
        return [("grpc.ssl_target_name_override", self.vm.ca.host),
                ("grpc.default_authority", self.vm.ca.host)]

    async def _classify(self, exc: grpc.aio.AioRpcError, *, renewal: bool) -> RegistrarError:
        code = exc.code().name
        details = (exc.details() or "")[:200]
        if code == "UNAUTHENTICATED":
            if renewal:
                return RegistrarError("reattest", "client_cert_rejected",
                                      f"istiod refused our certificate for renewal ({details})",
                                      url=self.url)
            if self._token_from_registrar:
                # A fresh token is minted per attempt, so retrying can succeed once
                # istiod's JWT_RULE (or its cached JWKS) is put right; nothing on the VM
                # needs to change.
                return RegistrarError(
                    "retry", "registrar_token_rejected",
                    f"istiod refused the token from mesh-registrar ({details}); istiod's "
                    "JWT_RULE must name the registrar's oidc.issuer, its jwks_uri and the "
                    "token's audience (docs/istio.md, 'Joining Istio with no secret on the "
                    "VM')", url=self.url)
            return RegistrarError(
                "fatal", "istio_token_rejected",
                f"istiod refused the istio-token ({details}); generate new VM files with "
                f"`istioctl x workload entry configure` and copy istio-token to "
                f"{self.vm.token_path}", url=self.url)
        if code == "UNAVAILABLE":
            # gRPC reports a failed handshake as UNAVAILABLE, like a refused
            # connection; one TLS handshake of our own tells the two apart.
            problem = await tls_verify_error(self.vm.resolve(self.vm.ca), self.vm.ca.port,
                                             self.vm.ca.host, self.vm.root_pem,
                                             timeout=min(self._timeout, 5.0))
            if problem is not None:
                return RegistrarError(
                    "fatal", "istiod_untrusted",
                    f"istiod's certificate at {self.target} does not verify against "
                    f"{self.vm.directory / 'root-cert.pem'} as {self.vm.ca.host} ({problem}); "
                    "copy the root-cert.pem of this mesh", url=self.url)
        if code in _RETRY_CODES:
            reason = "timeout" if code == "DEADLINE_EXCEEDED" else (
                "unreachable" if code == "UNAVAILABLE" else f"ca_{code.lower()}")
            return RegistrarError("retry", reason, f"{code}: {details}", url=self.url)
        return RegistrarError("fatal", f"ca_refused_{code.lower()}", f"{code}: {details}",
                              url=self.url)

    def _issued(self, pems: list[str]) -> Issued:
        try:
            certs = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            raise RegistrarError("retry", "bad_response", "cert_chain holds a non-PEM entry",
                                 url=self.url) from None
        if not certs:
            raise RegistrarError("retry", "bad_response", "empty cert_chain", url=self.url)
        leaf = certs[0]
        spiffe_id = _spiffe_id(leaf)
        if spiffe_id is None:
            raise RegistrarError("retry", "bad_response", "the leaf has no SPIFFE URI SAN",
                                 url=self.url)
        # Leaf and intermediates go in the chain; self-signed roots never do.
        chain = [p.strip() + "\n" for p, c in zip(pems, certs, strict=True)
                 if c is leaf or c.issuer != c.subject]
        not_after = leaf.not_valid_after_utc
        trust_domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        return Issued(
            spiffe_id=spiffe_id,
            chain_pem="".join(chain).encode(),
            bundle_pem=self.vm.root_pem,
            not_after=not_after,
            renew_after=not_after,  # no hint: the agent's own schedule decides
            mesh={"trust_domain": trust_domain, "namespace": self.vm.namespace,
                  "service_account": self.vm.service_account,
                  "issuer": "istiod", "ca": str(self.vm.ca)},
        )


def _spiffe_id(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)  # type: ignore[attr-defined]
    return next((u for u in uris if u.startswith("spiffe://")), None)
