"""The agent's live health as immutable snapshots.

The event loop is the only writer: each change builds a new frozen
``Snapshot`` and swaps ``Health.current`` to it in one reference assignment.
Readers on other threads (the status endpoint) take ``current`` once per
request and read only that object, so they never see half of an update (a new
serial with the old rotation count), whatever the thread switch timing.
Readers are the status endpoint, the metrics collector, systemd STATUS= lines
and `mesh-agent status`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # A type only: the entry point builds Health before cryptography is loaded
    # (agent.daemon.start starts Envoy first).
    from agent.credentials.model import Credentials

# Above this, the registrar's clock and ours disagree enough to report and to
# correct for: the HTTP Date header it is measured from has 1 s resolution and a
# request takes up to the registrar timeout.
CLOCK_SKEW_SECONDS = 10.0


def _frozen_map(items: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Snapshot:
    phase: str = "starting"  # starting|attesting|ready|renewing|expired|stopping
    attestor: str | None = None
    credentials: Credentials | None = None
    rotations: int = 0
    failures: Mapping[str, int] = field(default_factory=lambda: _frozen_map({}))
    last_success: dt.datetime | None = None
    last_error: str | None = None
    # Other readiness conditions (the sidecar, capture) register here: name -> ok.
    conditions: Mapping[str, bool] = field(default_factory=lambda: _frozen_map({}))
    # Per-part detail for `mesh-agent status` (e.g. the sidecar's state, restarts).
    details: Mapping[str, Mapping[str, object]] = field(default_factory=lambda: _frozen_map({}))
    # The registrar's clock minus ours (seconds), from its last answer's Date header.
    clock_offset: float | None = None

    @property
    def clock_skewed(self) -> bool:
        return self.clock_offset is not None and abs(self.clock_offset) >= CLOCK_SKEW_SECONDS

    def registrar_now(self, now: dt.datetime) -> dt.datetime:
        """``now`` on the registrar's clock when ours is known to be off, else ``now``.
        Certificates are the registrar's times, so they are judged by its clock."""
        if self.clock_skewed:
            assert self.clock_offset is not None
            return now + dt.timedelta(seconds=self.clock_offset)
        return now

    def cert_valid(self, now: dt.datetime) -> bool:
        return self.credentials is not None and self.credentials.valid_at(self.registrar_now(now))

    def ready(self, now: dt.datetime) -> bool:
        return self.cert_valid(now) and all(self.conditions.values())

    def expires_in(self, now: dt.datetime) -> float | None:
        if self.credentials is None:
            return None
        return (self.credentials.not_after - self.registrar_now(now)).total_seconds()

    def summary(self, now: dt.datetime) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        creds = self.credentials
        if creds is None:
            text = f"{self.phase}: no credentials yet"
        elif not self.cert_valid(now):
            text = f"{self.phase}: certificate for {creds.spiffe_id} EXPIRED at " \
                   f"{creds.not_after:%Y-%m-%d %H:%M:%SZ}"
        else:
            text = (f"{self.phase}: {creds.spiffe_id}, cert expires "
                    f"{creds.not_after:%Y-%m-%d %H:%M:%SZ}, {self.rotations} rotations")
        down = [name for name, ok in self.conditions.items() if not ok]
        if down:
            text += f"; not ready: {', '.join(down)}"
        if self.clock_skewed:
            text += f"; clock skew: registrar {self.clock_offset:+.0f}s from this host"
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
            "clock_offset_seconds": self.clock_offset,
            "clock_skew": self.clock_skewed,
            **{name: dict(detail) for name, detail in self.details.items()},
        }


class Health:
    """Holds the current ``Snapshot``. Write from the event loop only."""

    def __init__(self) -> None:
        self._current = Snapshot()

    @property
    def current(self) -> Snapshot:
        return self._current

    def update(self, **changes: Any) -> None:
        """Publish a new snapshot with ``changes`` applied, all at once."""
        self._current = replace(self._current, **changes)

    def condition(self, name: str, ok: bool) -> None:
        if self._current.conditions.get(name) is ok:
            return
        self.update(conditions=_frozen_map({**self._current.conditions, name: ok}))

    def detail(self, name: str, value: Mapping[str, object]) -> None:
        self.update(details=_frozen_map({**self._current.details, name: _frozen_map(value)}))

    def failed(self, reason: str, error: str) -> None:
        failures = dict(self._current.failures)
        failures[reason] = failures.get(reason, 0) + 1
        self.update(failures=_frozen_map(failures), last_error=error)
