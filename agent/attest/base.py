"""What every attestor provides, and the evidence it hands the registrar client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from meshcore.secret import Secret


@dataclass(frozen=True)
class Evidence:
    """Evidence for ``POST /v1/attest``: ``type`` selects the registrar's verifier.

    Secret fields stay wrapped until the wire encoder reveals them.
    """

    type: str
    fields: Mapping[str, str | Secret] = field(default_factory=dict)

    def wire(self) -> dict[str, str]:
        out = {"type": self.type}
        for key, value in self.fields.items():
            out[key] = value.reveal() if isinstance(value, Secret) else value
        return out


class AttestError(Exception):
    """Evidence could not be collected.

    ``retryable`` is true for passing faults (a metadata server that timed out),
    false when retrying cannot help (no token file, not on this platform).
    ``config`` marks evidence that is there but malformed: the operator must
    fix a file (exit 78), not supply new evidence.
    """

    def __init__(self, message: str, *, retryable: bool, config: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.config = config


class Attestor(Protocol):
    """One platform's way to prove identity. Cheap to construct; no I/O until called."""

    @property
    def name(self) -> str:
        """Config and status name: ``token``, ``gce``, ``aws``, ``azure``."""
        ...

    @property
    def needs_challenge(self) -> bool:
        """True when the evidence binds a registrar nonce (GCE audience, Azure nonce)."""
        ...

    async def detect(self) -> bool:
        """Whether this attestor can produce evidence here, now (bounded, cheap)."""
        ...

    async def evidence(self, challenge: str | None) -> Evidence:
        """Collect fresh evidence, bound to ``challenge`` where supported."""
        ...

    def spent(self) -> None:
        """Called once the credentials this evidence bought are durably stored.

        The token attestor deletes its one-time token here, never earlier.
        """
        ...
