"""The seam between the identity manager and whoever signs our certificates.

Two issuers implement it: mesh-registrar (``agent.registrar_client``, HTTPS +
evidence) and istiod's CA (``agent.istio.ca_client``, gRPC + istio-token).
Both raise ``RegistrarError`` -- the issuer error -- whose ``action`` tells
the manager whether to retry, attest again, or stop; ``reason`` is the
machine-readable cause that metrics and logs carry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from agent.attest.base import Evidence
from agent.registrar_client.wire import Issued


class IssuerClient(Protocol):
    ca_file: Path
    """The local trust anchor the issuer is verified against."""
    last_date: dt.datetime | None
    """The issuer's clock from its last answer (HTTP Date), taken and reset by the
    manager to measure clock skew; None where the protocol carries none."""

    @property
    def url(self) -> str:
        """Where the issuer is, for logs, state and status."""
        ...

    async def challenge(self) -> str:
        """A nonce for attestors that bind one (only asked when ``needs_challenge``)."""
        ...

    async def attest(self, evidence: Evidence, csr_pem: bytes, *, challenge: str | None,
                     hostname: str, addresses: Sequence[str]) -> Issued:
        """A first certificate for ``csr_pem``, proven by ``evidence``."""
        ...

    async def renew(self, csr_pem: bytes, *, chain_file: Path, key_file: Path,
                    hostname: str, addresses: Sequence[str]) -> Issued:
        """A new certificate, proven by the current one (mTLS)."""
        ...
