"""What the agent tells the registrar about its host: name and addresses."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

HostInfo = Callable[[], tuple[str, list[str]]]
PROC_NET = Path("/proc/net")


def local_host_info() -> tuple[str, list[str]]:
    return safe_hostname(socket.gethostname()), local_addresses()


def local_addresses(proc_net: Path = PROC_NET) -> list[str]:
    """This host's addresses (network namespace), without loopback and link-local.

    Read from the kernel's own tables rather than a library (psutil was about
    1 MiB of the agent's resident memory for this one call, made at every
    health report): an IPv4 address is a ``/32 host LOCAL`` entry in
    ``/proc/net/fib_trie`` (the kernel adds one for each address it owns),
    an IPv6 address a line of ``/proc/net/if_inet6``. A missing table (no IPv6)
    contributes nothing."""
    found = (_fib_trie_locals(_lines(proc_net / "fib_trie"))
             + _if_inet6(_lines(proc_net / "if_inet6")))
    addresses = set()
    for text in found:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local):
            addresses.add(str(ip))
    return sorted(addresses)[:64]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _fib_trie_locals(lines: Iterable[str]) -> list[str]:
    """``|-- 192.0.2.2`` followed by ``/32 host LOCAL``: an address of this host."""
    out, last = [], ""
    for line in lines:
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text.startswith("/32 host LOCAL") and last:
            out.append(last)
    return out


def _if_inet6(lines: Iterable[str]) -> list[str]:
    """``20010db8000000000000000000000001 02 40 00 80 eth0``: 32 hex digits first."""
    out = []
    for line in lines:
        hexed = line.split(maxsplit=1)[0] if line.strip() else ""
        if len(hexed) == 32:
            out.append(":".join(hexed[i:i + 4] for i in range(0, 32, 4)))
    return out


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
