"""Proving that outbound redirection reaches the proxy, with a real connection.

The probe connects (as the agent, which is not the proxy user, so it is
captured) to a documentation address that routes nowhere. Only a listener on
this host can complete that handshake, and the agent never opens one itself:
the proxy (our Envoy, or with ``capture.external_proxy`` the other proxy) must
be the one that answers on the outbound port. A refused or unanswered
connection means capture would send every application's connections to a
port nobody serves, so the apply is rolled back.

Runnable as ``python -m agent.capture.probe FAMILY ADDRESS PORT EXPECT_PORT``
so a test (or the agent) can run it inside another network namespace.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from agent.capture.plan import Probe
from agent.capture.runner import Runner

NO_ROUTE = (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


class Prober(Protocol):
    async def probe(self, probe: Probe) -> ProbeResult: ...


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
    address = remote[0]
    with socket.socket(af, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect((address, probe.port))
        except OSError as exc:
            if exc.errno in NO_ROUTE:
                # No route for this family: no app can send such traffic either.
                return ProbeResult(True, f"skipped: no IPv{probe.family} route ({exc})")
            why = ("nothing listens there: the proxy must be running before capture"
                   if exc.errno == errno.ECONNREFUSED else str(exc) or type(exc).__name__)
            return ProbeResult(False, f"connect to {address}:{probe.port} was not answered "
                                      f"by a proxy on port {probe.expect_port}: {why}")
    return ProbeResult(True, f"handshake to {address}:{probe.port} answered by the proxy "
                             f"on port {probe.expect_port}")


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
