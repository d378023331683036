"""IP literal or host name: one rule for every component that must tell them
apart (a TLS SAN is ``IP_ADDRESS`` or ``DNS``, SNI is sent only for a name,
an Envoy cluster is ``STATIC`` or ``STRICT_DNS``)."""

from __future__ import annotations

import ipaddress


def is_ip_literal(host: str) -> bool:
    """``host`` is an IPv4 or IPv6 address as written in a URL's host part
    without brackets (``10.0.0.5``, ``fd00::1``), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
