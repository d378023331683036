"""What the agent tells the registrar about its host: name and addresses."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import psutil

HostInfo = Callable[[], tuple[str, list[str]]]


def local_host_info() -> tuple[str, list[str]]:
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
    return socket.gethostname(), sorted(set(addresses))[:64]
