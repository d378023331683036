"""Proving that outbound redirection really works, with a real connection.

The probe connects (as the agent, which is not the proxy user, so it is
captured) to a documentation address that routes nowhere. If the proxy's
outbound port is free, we listen on it ourselves and read the accepted
socket's ``SO_ORIGINAL_DST``: it must be exactly the address we dialled. If
the proxy already owns the port, a completed handshake to an address that
does not exist is the proof that the connection was redirected.

Runnable as ``python -m agent.capture.probe FAMILY ADDRESS PORT EXPECT_PORT``
so a test (or the agent) can run it inside another network namespace.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from agent.capture.plan import Probe
from agent.capture.runner import Runner

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
NO_ROUTE = (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    original_dst: str | None = None


class Prober(Protocol):
    async def probe(self, probe: Probe) -> ProbeResult: ...


def original_dst(conn: socket.socket) -> tuple[str, int]:
    """The pre-NAT destination of an accepted, redirected connection."""
    if conn.family == socket.AF_INET:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, packed = struct.unpack_from("!2xH4s", raw)
        return str(ipaddress.IPv4Address(packed)), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, packed = struct.unpack_from("!2xH4x16s", raw)
    return str(ipaddress.IPv6Address(packed)), port


def _listen(family: int, port: int) -> socket.socket | None:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = socket.socket(af, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("0.0.0.0" if family == 4 else "::", port))  # noqa: S104 - redirect target
        sock.listen(4)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None  # the proxy owns the port
        raise
    return sock


def _is_local(af: socket.AddressFamily, address: str) -> bool:
    """Traffic to this host's own addresses leaves on lo and is, like in Istio, not captured."""
    with socket.socket(af, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
        return True


def probe_once(probe: Probe, timeout: float = 2.0) -> ProbeResult:
    """Blocking: one probe connection, judged as described in the module docstring."""
    af = socket.AF_INET if probe.family == 4 else socket.AF_INET6
    remote = [a for a in probe.addresses if not _is_local(af, a)]
    if not remote:
        return ProbeResult(True, f"skipped: every IPv{probe.family} probe candidate is local")
    return _probe_address(af, probe, remote[0], timeout)


def _probe_address(af: socket.AddressFamily, probe: Probe, address: str,
                   timeout: float) -> ProbeResult:
    try:
        listener = _listen(probe.family, probe.expect_port)
    except OSError as exc:
        return ProbeResult(False, f"cannot listen on port {probe.expect_port}: {exc}")
    try:
        with socket.socket(af, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            try:
                client.connect((address, probe.port))
            except OSError as exc:
                if exc.errno in NO_ROUTE:
                    # No route for this family: no app can send such traffic either.
                    return ProbeResult(True, f"skipped: no IPv{probe.family} route ({exc})")
                return ProbeResult(False, f"connect to {address}:{probe.port} was not "
                                          f"redirected to port {probe.expect_port}: {exc}")
            if listener is None:
                return ProbeResult(True, f"handshake to {address}:{probe.port} answered "
                                         f"by the proxy on port {probe.expect_port}")
            listener.settimeout(timeout)
            conn, _ = listener.accept()
            with conn:
                host, port = original_dst(conn)
            seen = f"{host}:{port}"
            if (ipaddress.ip_address(host), port) != (ipaddress.ip_address(address), probe.port):
                return ProbeResult(False, f"SO_ORIGINAL_DST is {seen}, dialled "
                                          f"{address}:{probe.port}", seen)
            return ProbeResult(True, f"redirected to port {probe.expect_port}, "
                                     f"SO_ORIGINAL_DST {seen}", seen)
    except OSError as exc:
        return ProbeResult(False, f"probe failed: {exc}")
    finally:
        if listener is not None:
            listener.close()


class LocalProber:
    """Probes from this process (the agent's own network namespace)."""

    async def probe(self, probe: Probe) -> ProbeResult:
        return await asyncio.to_thread(probe_once, probe)


class SubprocessProber:
    """Probes by running this module through a runner (e.g. inside a netns)."""

    def __init__(self, runner: Runner, python: str = sys.executable) -> None:
        self._runner = runner
        self._python = python

    async def probe(self, probe: Probe) -> ProbeResult:
        result = await self._runner.run([
            self._python, "-m", "agent.capture.probe", str(probe.family),
            ",".join(probe.addresses), str(probe.port), str(probe.expect_port)], timeout=30)
        try:
            return ProbeResult(**json.loads(result.stdout))
        except (ValueError, TypeError):
            return ProbeResult(False, f"probe helper failed ({result.returncode}): "
                                      f"{result.stderr.strip()[-300:]}")


def main(argv: Sequence[str]) -> int:
    family, addresses, port, expect = argv
    result = probe_once(Probe(int(family), tuple(addresses.split(",")), int(port), int(expect)))
    print(json.dumps(asdict(result)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
