"""Checks a service before it is stored: every error says what is allowed.

The snapshot builder trusts stored rows; a row that bypassed these checks (an
old registrar, a hand edit) is what Envoy's own validation and NACK catch.
"""

from __future__ import annotations

import ipaddress
import re

from registrar.catalog.model import PROTOCOLS, Service

_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")


def check_service(service: Service) -> None:
    """Raise ValueError naming the field and the allowed values."""
    if not _NAME.match(service.name):
        raise ValueError(f"name {service.name!r}: allowed: lowercase DNS label")
    if not service.hosts:
        raise ValueError("hosts: at least one hostname, e.g. orders.shop.mesh")
    for host in service.hosts:
        if not _HOST.match(host):
            raise ValueError(f"host {host!r}: allowed: a lowercase DNS name with a dot, "
                             "e.g. orders.shop.mesh")
    if not service.ports:
        raise ValueError("ports: at least one, e.g. http:9090/HTTP")
    seen: set[str] = set()
    numbers: set[int] = set()
    for port in service.ports:
        if not _PORT_NAME.match(port.name) or port.name in seen:
            raise ValueError(f"port name {port.name!r}: allowed: a unique lowercase name "
                             "(letters, digits, '-'; at most 15 characters)")
        if not 1 <= port.number <= 65535 or port.number in numbers:
            raise ValueError(f"port {port.number}: allowed: a unique number 1..65535")
        if not 0 <= port.target_port <= 65535:
            raise ValueError(f"target port {port.target_port}: allowed: 1..65535")
        if port.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {port.protocol!r}: allowed: {'|'.join(PROTOCOLS)}")
        seen.add(port.name)
        numbers.add(port.number)
    if not service.selector:
        raise ValueError("selector: at least one label, e.g. app=orders")
    for key, value in service.selector.items():
        if not _LABEL.match(key) or not _LABEL.match(value):
            raise ValueError(f"selector {key}={value}: allowed: label keys and values of "
                             "letters, digits, '.', '_', '-', '/'")
    if service.vip:
        try:
            vip = ipaddress.ip_address(service.vip)
        except ValueError:
            raise ValueError(f"vip {service.vip!r}: allowed: an IPv4 address") from None
        if vip.version != 4:
            raise ValueError(f"vip {service.vip!r}: allowed: an IPv4 address")
    for caller in service.allowed:
        if caller.startswith("spiffe://"):
            if len(caller) <= len("spiffe://") or " " in caller:
                raise ValueError(f"caller {caller!r}: allowed: spiffe://TD/path or .../*")
        elif not _NAME.match(caller):
            raise ValueError(f"caller {caller!r}: allowed: a SPIFFE ID or a group name")
