"""The signing authority: the loaded intermediate, its chain and roots, and leaf issuance.

``load_authority`` reads files (I/O at the edge); ``Authority.issue`` is pure
apart from the clock and the serial's randomness, which are injected.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from registrar.ca.csr import PublicKey
from registrar.ca.keyids import authority_key_id
from registrar.config import CaFiles

# NotBefore lies this far in the past (``cert_backdate``), so a peer whose clock is
# a little behind ours accepts a fresh certificate; never before the issuer's own.
BACKDATE = dt.timedelta(seconds=10)
RENEW_FRACTION = 0.5
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_pem_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_signing_key(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: CA key must be ECDSA or RSA, got {type(key).__name__}")
    return key


def pem(certs: list[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    serial_hex: str
    not_before: dt.datetime
    not_after: dt.datetime
    renew_after: dt.datetime
    chain_pem: str


class Authority:
    """Signs workload leaves with the intermediate; knows the chain and bundle."""

    def __init__(self, *, cert: x509.Certificate, key: SigningKey,
                 intermediates: list[x509.Certificate], roots: list[x509.Certificate],
                 clock: Clock = utcnow, version: str = "", bundle_version: int = 1,
                 backdate: dt.timedelta = BACKDATE) -> None:
        # ``version``: the CA version that signs (registrar/ca/versions.py), recorded
        # with every leaf so ``ca rotate retire`` knows which root each one needs.
        self.version = version
        self.bundle_version = bundle_version
        self.cert = cert
        self._backdate = backdate
        self._key = key
        self._intermediates = intermediates
        self.roots = roots
        self._clock = clock
        self.bundle_pem = pem(roots)
        self._intermediates_pem = pem(intermediates)
        self._hash = hashes.SHA256() if isinstance(key, ec.EllipticCurvePrivateKey) or (
            key.key_size < 3072) else hashes.SHA384()
        # Leaves name their issuer by its own SKI, so strict verifiers can build the chain.
        self._aki = authority_key_id(cert).extension

    def with_bundle(self, roots: list[x509.Certificate], bundle_version: int) -> Authority:
        """The same signer, handing out ``roots`` as the trust bundle."""
        return Authority(cert=self.cert, key=self._key, intermediates=self._intermediates,
                         roots=roots, clock=self._clock, version=self.version,
                         bundle_version=bundle_version, backdate=self._backdate)

    def issue(self, public_key: PublicKey, spiffe_id: str, ttl: float) -> Issued:
        """A workload leaf: URI SAN (critical, empty subject), CA:false, server+client auth,
        and both key identifiers (RFC 5280; strict verifiers require the AKI)."""
        now = self._clock()
        # A leaf starting before its issuer fails strict path validation.
        not_before = max(now - self._backdate, self.cert.not_valid_before_utc)
        issuer_end = self.cert.not_valid_after_utc
        not_after = min(now + dt.timedelta(seconds=ttl), issuer_end)
        serial = secrets.randbits(159) | 1 << 158  # positive, 20 bytes, never zero
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
            .add_extension(self._aki, critical=False)
        )
        leaf = builder.sign(self._key, self._hash)
        lifetime = not_after - not_before
        return Issued(
            certificate=leaf,
            serial_hex=format(serial, "x"),
            not_before=not_before,
            not_after=not_after,
            renew_after=not_before + lifetime * RENEW_FRACTION,
            chain_pem=pem([leaf]) + self._intermediates_pem,
        )


def issued_again(chain_pem: str) -> Issued:
    """An ``Issued`` for a chain this registrar signed earlier (a join token's lost
    answer given again): the same certificate, times read from the leaf."""
    leaf = x509.load_pem_x509_certificate(chain_pem.encode("ascii"))
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return Issued(certificate=leaf, serial_hex=format(leaf.serial_number, "x"),
                  not_before=not_before, not_after=not_after,
                  renew_after=not_before + (not_after - not_before) * RENEW_FRACTION,
                  chain_pem=chain_pem)


class AuthoritySource(Protocol):
    """Where the current authority comes from (registrar/ca/live.py reloads it)."""

    def authority(self) -> Authority: ...


class FixedAuthority:
    def __init__(self, authority: Authority) -> None:
        self._authority = authority

    def authority(self) -> Authority:
        return self._authority


def load_authority(files: CaFiles, clock: Clock = utcnow, version: str = "",
                   backdate: dt.timedelta = BACKDATE) -> Authority:
    """Read the plug-in layout. ``chain`` may hold the intermediate and the root (Istio
    writes ``cert-chain.pem`` as ca-cert + root); roots are never sent as chain."""
    cert = load_pem_certs(files.cert)[0]
    roots = load_pem_certs(files.roots)
    root_fps = {r.fingerprint(hashes.SHA256()) for r in roots}
    intermediates = [c for c in load_pem_certs(files.chain)
                     if c.fingerprint(hashes.SHA256()) not in root_fps and not _is_self_signed(c)]
    if _is_self_signed(cert):
        intermediates = []  # signing with the root itself: nothing between leaf and bundle
    elif not intermediates or intermediates[0] != cert:
        intermediates = [cert, *[c for c in intermediates if c != cert]]
    return Authority(cert=cert, key=load_signing_key(files.key), intermediates=intermediates,
                     roots=roots, clock=clock, version=version, backdate=backdate)
