"""Pure: the nameservers of a resolv.conf text, the upstreams the proxy forwards to."""

from __future__ import annotations

import ipaddress

MAXNS = 3  # glibc uses at most three nameservers


def nameservers(text: str) -> tuple[str, ...]:
    """Valid ``nameserver`` addresses in order (zone suffixes dropped), at most three."""
    out: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = str(ipaddress.ip_address(words[1].partition("%")[0]))
            except ValueError:
                continue
            if address not in out:
                out.append(address)
    return tuple(out[:MAXNS])
