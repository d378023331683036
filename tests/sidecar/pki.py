"""A throwaway mesh CA for sidecar tests: SPIFFE leaf certs, short TTLs, serials we can check.

Stands in for the registrar until its fixture lands; the certificates have the
registrar's shape (URI SAN only, CA:false, ECDSA P-256, NotBefore backdated).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.sidecar.sds import Generation


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Leaf:
    spiffe_id: str
    serial: int
    key_pem: bytes
    cert_pem: bytes


class MeshCA:
    def __init__(self, trust_domain: str = "example.org") -> None:
        self.trust_domain = trust_domain
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                          x509.NameAttribute(NameOID.COMMON_NAME, "test mesh root")])
        self._name = name
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._counter = 0

    def spiffe(self, ns: str, sa: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/{ns}/sa/{sa}"

    def issue(self, spiffe_id: str, ttl: dt.timedelta = dt.timedelta(hours=1)) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        cert_pem, serial = self.sign(key.public_key(), spiffe_id, ttl)
        return Leaf(spiffe_id, serial, _pem_key(key), cert_pem)

    def sign(self, public_key: ec.EllipticCurvePublicKey, spiffe_id: str,
             ttl: dt.timedelta = dt.timedelta(hours=1)) -> tuple[bytes, int]:
        """A leaf for ``public_key`` (the agent's own key), shaped like the registrar's."""
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name).public_key(public_key).serial_number(serial)
            .not_valid_before(_now() - dt.timedelta(seconds=10))
            .not_valid_after(_now() + ttl)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), serial

    def generation(self, leaf: Leaf) -> Generation:
        self._counter += 1
        return Generation(name=f"{self._counter:04d}-{leaf.serial:x}"[:24], key_pem=leaf.key_pem,
                          chain_pem=leaf.cert_pem, bundle_pem=self.bundle_pem)
