"""One set of credentials: a key, the chain that certifies it, the trust bundle."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.identity.keys import PrivateKey


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else None


def load_pem_certs(data: bytes) -> list[x509.Certificate]:
    """PEM certificates; ``ValueError`` for anything that does not parse, including
    an unknown X.509 version, which cryptography raises as ``InvalidVersion`` (not
    a ValueError: it ended start-up with exit 1; found by tests/fuzz, agent_state)."""
    try:
        return x509.load_pem_x509_certificates(data)
    except x509.InvalidVersion as exc:
        raise ValueError(f"not an X.509 v1-v3 certificate: {exc}") from None


@dataclass(frozen=True)
class Credentials:
    """A matching key/chain pair plus the bundle, as loaded from one generation."""

    generation: str
    directory: Path
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    bundle: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def spiffe_id(self) -> str | None:
        return spiffe_id_of(self.leaf)

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial_hex(self) -> str:
        return format(self.leaf.serial_number, "x")

    def valid_at(self, now: dt.datetime) -> bool:
        return self.not_before <= now < self.not_after

    @property
    def key_path(self) -> Path:
        return self.directory / "key.pem"

    @property
    def chain_path(self) -> Path:
        return self.directory / "cert-chain.pem"

    @property
    def bundle_path(self) -> Path:
        return self.directory / "bundle.pem"
