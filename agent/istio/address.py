"""``HOST:PORT`` as Istio writes addresses (``istiod.istio-system.svc:15012``,
``[fd00::1]:15012``), checked where they are read so errors carry a line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.istio.errors import file_error
from meshcore.netaddr import is_ip_literal

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
EXPECTED = "HOST:PORT, e.g. istiod.istio-system.svc:15012"


@dataclass(frozen=True)
class Address:
    host: str  # a DNS name or an IP literal (no brackets)
    port: int

    @property
    def is_ip(self) -> bool:
        return is_ip_literal(self.host)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, path: Path, line: int, what: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = is_ip_literal(host)
    else:
        valid_host = bool(_HOSTNAME.match(host)) or (is_ip_literal(host) and ":" not in host)
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not valid_host:
        raise file_error(path, line, what, f"{text!r} is not HOST:PORT", EXPECTED)
    return Address(host.rstrip("."), int(port))

