"""What the agent tells the registrar about its host: name and addresses."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

HostInfo = Callable[[], tuple[str, list[str]]]


def local_host_info() -> tuple[str, list[str]]:
    # Imported at the one call that needs it (an attestation): an agent restarting
    # on stored credentials never loads psutil's extension and its tables.
    import psutil

    addresses: list[str] = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(entry.address.split("%")[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local):
                addresses.append(str(ip))
    return safe_hostname(socket.gethostname()), sorted(set(addresses))[:64]


def safe_hostname(name: str) -> str:
    """The hostname as printable UTF-8 text that any CSR, JSON body and log line
    can carry. It is informational only (the registrar decides the identity), so
    bytes that are not UTF-8 (Python hands them over as lone surrogates) are
    shown as ``\\xNN`` and control characters as ``?``, rather than crashing CSR
    building or reaching the registrar as invalid text."""
    raw = os.fsencode(name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:253] or "localhost"
