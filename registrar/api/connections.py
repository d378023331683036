"""How many connections a worker holds: a cap per source address and a global
cap below the process's open-file limit, checked when a connection is made
(after the TLS handshake, which ``HANDSHAKE_SECONDS`` bounds).

Pure apart from the injected clock, which rate-limits the log line: a flood of
refused connections logs at most one line per kind of refusal (total, per
address) every ``LOG_EVERY`` seconds. Counts are per worker process, like the
file limit they protect.
"""

from __future__ import annotations

import logging
import resource

from meshcore.clock import Clock

log = logging.getLogger("registrar.http")

LOG_EVERY = 60.0
# A peer that opens TCP and never finishes the TLS handshake is dropped after this,
# on every port the registrar listens on (the HTTPS API, the Istio CA, xDS).
HANDSHAKE_SECONDS = 10.0
# Files a worker needs besides its connections: the database, logs, the listener,
# TLS files on reload, the handshakes in flight.
RESERVED_FILES = 256


def file_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def usable_connections(configured: int, files: int) -> int:
    """``configured``, lowered to leave ``RESERVED_FILES`` of ``files`` free."""
    return max(1, min(configured, files - RESERVED_FILES))


class ConnectionGate:
    def __init__(self, *, total: int, per_address: int, clock: Clock) -> None:
        self._total = total
        self._per_address = per_address
        self._clock = clock
        self._open: dict[str, int] = {}
        self._count = 0
        self._logged: dict[str, float] = {}

    def admit(self, address: str) -> bool:
        """Count the connection in and return True, or refuse it (and say so, rarely)."""
        if self._count >= self._total:
            self._refused("total", f"{self._total} connections open in this worker")
            return False
        held = self._open.get(address, 0)
        if held >= self._per_address:
            self._refused("address", f"{held} connections open from {address}")
            return False
        self._open[address] = held + 1
        self._count += 1
        return True

    def release(self, address: str) -> None:
        held = self._open.get(address, 0)
        if held <= 1:
            self._open.pop(address, None)
        else:
            self._open[address] = held - 1
        self._count = max(0, self._count - 1)

    @property
    def open_connections(self) -> int:
        return self._count

    def _refused(self, kind: str, detail: str) -> None:
        now = self._clock.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._logged[kind] = now
            log.warning("refusing connections: %s (logged at most once a minute)", detail)
