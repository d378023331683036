"""systemd notifications: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

A no-op outside systemd (no NOTIFY_SOCKET). The watchdog interval is half of
WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status: str | None = None

    def _send(self, state: str) -> None:
        if not self._enabled:
            return
        from systemd import daemon

        if not daemon.notify(state):
            log.warning("sd_notify failed", extra={"state": state.split("=", maxsplit=1)[0]})

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")
        self._last_status = status

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._send(f"STATUS={status}")
            self._last_status = status

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Seconds between pings, or None when systemd does not watch us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(0.05, int(usec) / 2_000_000)
        except ValueError:
            return None
