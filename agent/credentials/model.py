"""One set of credentials: a key, the chain that certifies it, the trust bundle."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from agent.credentials.der import Cert


@dataclass(frozen=True)
class Credentials:
    """A matching key/chain pair plus the bundle, as loaded from one generation."""

    generation: str
    directory: Path
    key_pem: bytes = field(repr=False)  # a secret: never in a repr, so never in a log
    chain: tuple[Cert, ...]
    bundle: tuple[Cert, ...]

    @property
    def leaf(self) -> Cert:
        return self.chain[0]

    @property
    def spiffe_id(self) -> str | None:
        return self.leaf.spiffe_id

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_before

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_after

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
