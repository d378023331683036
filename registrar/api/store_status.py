"""What ``/healthz`` and ``/ready`` say about the store: its type, and whether it
answers now (PostgreSQL: one ``SELECT 1``; SQLite is a local file: always)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoreStatus:
    kind: str
    ping: Callable[[], bool] | None = None

    def reachable(self) -> bool:
        return True if self.ping is None else self.ping()
