"""The agent's live health, written by the daemon's tasks and read by the status
endpoint, the metrics collector, systemd STATUS= lines and `mesh-agent status`."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from agent.credentials.model import Credentials


@dataclass
class Health:
    phase: str = "starting"  # starting|attesting|ready|renewing|expired|stopping
    attestor: str | None = None
    credentials: Credentials | None = None
    rotations: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    last_success: dt.datetime | None = None
    last_error: str | None = None
    # Other readiness conditions (the sidecar, capture) register here: name -> ok.
    conditions: dict[str, bool] = field(default_factory=dict)
    # Per-part detail for `mesh-agent status` (e.g. the sidecar's state, restarts).
    details: dict[str, object] = field(default_factory=dict)

    def cert_valid(self, now: dt.datetime) -> bool:
        return self.credentials is not None and self.credentials.valid_at(now)

    def ready(self, now: dt.datetime) -> bool:
        return self.cert_valid(now) and all(self.conditions.values())

    def expires_in(self, now: dt.datetime) -> float | None:
        if self.credentials is None:
            return None
        return (self.credentials.not_after - now).total_seconds()

    def summary(self, now: dt.datetime) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        creds = self.credentials
        if creds is None:
            text = f"{self.phase}: no credentials yet"
        elif not creds.valid_at(now):
            text = f"{self.phase}: certificate for {creds.spiffe_id} EXPIRED at " \
                   f"{creds.not_after:%Y-%m-%d %H:%M:%SZ}"
        else:
            text = (f"{self.phase}: {creds.spiffe_id}, cert expires "
                    f"{creds.not_after:%Y-%m-%d %H:%M:%SZ}, {self.rotations} rotations")
        down = [name for name, ok in self.conditions.items() if not ok]
        if down:
            text += f"; not ready: {', '.join(down)}"
        if self.last_error and self.phase != "ready":
            text += f"; last error: {self.last_error}"
        return text[:400]

    def as_dict(self, now: dt.datetime) -> dict[str, object]:
        creds = self.credentials
        return {
            "phase": self.phase,
            "ready": self.ready(now),
            "attestor": self.attestor,
            "spiffe_id": creds.spiffe_id if creds else None,
            "serial": creds.serial_hex if creds else None,
            "generation": creds.generation if creds else None,
            "not_after": creds.not_after.isoformat() if creds else None,
            "expires_in_seconds": self.expires_in(now),
            "rotations": self.rotations,
            "failures": dict(self.failures),
            "last_success": self.last_success.isoformat() if self.last_success else None,
            "last_error": self.last_error,
            "conditions": dict(self.conditions),
            **{name: detail for name, detail in self.details.items()},
        }
