"""The ``dns:`` section of the agent config.

Example::

    dns:
      enabled: true            # run the DNS proxy (default false)
      listen_port: 15053       # on 127.0.0.1, UDP and TCP
      capture: true            # redirect the app's DNS to it (needs capture.enabled)
      refresh: 30s             # how often the mesh name table is re-read
      resolv_conf: /etc/resolv.conf
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshcore.config.reader import Section


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool = False
    listen_port: int = 15053
    capture: bool = True
    refresh: float = 30.0
    resolv_conf: Path = Path("/etc/resolv.conf")


def parse_dns(s: Section) -> DnsConfig:
    return DnsConfig(
        enabled=s.flag("enabled", False),
        listen_port=s.integer("listen_port", 15053, minimum=1, maximum=65535),
        capture=s.flag("capture", True),
        refresh=s.duration("refresh", 30.0, minimum=1, maximum=3600),
        resolv_conf=s.path("resolv_conf", "/etc/resolv.conf"),
    )
