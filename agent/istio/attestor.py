"""The istio-token as evidence for a first certificate from istiod's CA.

Unlike mesh-registrar's join token it is not one-time: it stays in place after
use (``spent`` does nothing) and is re-read at every attempt, so an operator
can drop a fresh one in without a restart. It is only needed when there is no
valid certificate to renew with.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.attest.base import AttestError, Evidence
from agent.istio.token import IstioToken, read_token
from meshcore.clock import Clock
from meshcore.config.errors import ConfigError

log = logging.getLogger(__name__)
NAME = "istio-token"


class IstioTokenAttestor:
    name = NAME
    needs_challenge = False

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock

    def _read(self) -> IstioToken | None:
        try:
            return read_token(self.path)
        except ConfigError as exc:
            raise AttestError(str(exc), retryable=False, config=True) from None

    async def detect(self) -> bool:
        """A token is present and, by its own ``exp``, not yet expired."""
        try:
            token = self._read()
        except AttestError:
            return True  # evidence() reports the malformed file as a config error
        if token is None:
            return False
        if token.expired_at(self._clock.now()):
            log.warning("the istio-token has expired", extra={
                "path": str(self.path),
                "expired": token.expires.isoformat() if token.expires else None})
            return False
        return True

    async def evidence(self, challenge: str | None) -> Evidence:
        token = self._read()
        if token is None:
            raise AttestError(f"{self.path}: no istio-token", retryable=False)
        return Evidence("istio-token", {"token": token.value})

    def spent(self) -> None:
        """The token is reusable until it expires; it stays where the operator put it."""


def recovery_hint(path: Path) -> str:
    return ("To recover: where kubectl reaches the cluster, run `istioctl x workload entry "
            f"configure ...` again and copy the new istio-token to {path} (mode 0600), then "
            "`systemctl restart mesh-agent`.")
