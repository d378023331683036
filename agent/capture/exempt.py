"""The always-exempt destinations, resolved at the edge for the pure planner.

The registrar is the agent's lifeline: renewals, re-attestation and the trust
bundle all go to it. Its addresses go direct like the metadata service, so a
proxy that is down (fail-closed) or an external proxy that does not know the
registrar can never cut the VM off from its own certificate. Only the
registrar's port is exempt: other services behind the same address (a shared
load balancer) stay captured. An istiod or CA address joins the same tuple.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from agent.capture.plan import Exempt
from agent.capture.runner import CaptureError

Resolver = Callable[[str, int], list[str]]


def getaddrinfo_addresses(host: str, port: int) -> list[str]:
    """Every TCP address ``host`` resolves to, IPv4 and IPv6, as the client would dial."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]).partition("%")[0] for info in infos]


def url_exemptions(url: str, why: str, resolve: Resolver = getaddrinfo_addresses
                   ) -> tuple[Exempt, ...]:
    """The host of ``url`` (an https URL), resolved now, on the URL's port."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        raise CaptureError(f"cannot resolve the {why} host {host!r} ({exc}); capture must "
                           f"exempt it or it would cut the agent off from the {why}") from exc
    networks = sorted({str(ipaddress.ip_network(a)) for a in addresses},
                      key=lambda n: (ipaddress.ip_network(n).version, n))
    if not networks:
        raise CaptureError(f"the {why} host {host!r} resolved to no address")
    return tuple(Exempt(n, port, why) for n in networks)
