"""The mesh name table and the proxy's address: no dnspython here, so the daemon
imports it at start-up whether or not the DNS proxy is enabled."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

LISTEN = ("127.0.0.1", 15053)


@dataclass
class NameTable:
    """Hostname -> VIP, replaced whole on every refresh from the registrar."""

    names: Mapping[str, str] = field(default_factory=dict)

    def update(self, names: Mapping[str, str]) -> bool:
        changed = dict(names) != dict(self.names)
        self.names = dict(names)
        return changed
