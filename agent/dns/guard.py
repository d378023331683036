"""The DNS fail-safe: the app's DNS is redirected to the proxy only while the
proxy answers.

Every ``interval`` the guard asks the proxy, over the wire on 127.0.0.1:15053,
for a reserved name it answers itself (no upstream involved). After
``failures`` missed answers in a row it re-applies capture without the DNS
redirect, so the app's queries go straight to the nameservers of
/etc/resolv.conf again; once the proxy answers again the redirect returns.
Capture's other rules are untouched (the same verified, atomic apply).

The guard runs in the agent: if the whole agent dies, systemd restarts it and
its start removes a crashed run's rules (``reconcile_on_start``), so the
redirect outlives the agent at most for the restart delay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from agent.capture.controller import CaptureController
from agent.capture.plan import DnsCapture
from agent.capture.runner import CaptureError
from agent.dns.answer import PROBE_NAME
from meshcore.clock import Clock

log = logging.getLogger(__name__)
Check = Callable[[], Awaitable[bool]]


def wire_check(host: str, port: int, timeout: float = 0.5) -> Check:
    """Ask the proxy for ``PROBE_NAME``; True when it answered NOERROR."""
    async def check() -> bool:
        try:
            answer = await dns.asyncquery.udp(dns.message.make_query(PROBE_NAME, "A"), host,
                                              timeout=timeout, port=port)
        except (dns.exception.DNSException, OSError):
            return False
        return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)
    return check


class DnsGuard:
    def __init__(self, capture: CaptureController, dns_capture: DnsCapture, check: Check,
                 clock: Clock, *, interval: float = 1.0, failures: int = 2,
                 active: Callable[[], bool] = lambda: True) -> None:
        self._capture = capture
        # False while capture is off (not yet on, or failed open): then only the
        # wish is recorded, and capture's own next apply carries it.
        self._active = active
        self._dns = dns_capture
        self._check = check
        self._clock = clock
        self.interval = interval
        self.failures = failures
        self._missed = 0
        self.redirecting = capture.dns_capture is not None
        self.transitions: list[tuple[float, bool]] = []  # (monotonic, redirecting)

    async def _set(self, redirect: bool) -> None:
        self._capture.capture_dns(self._dns if redirect else None)
        if self._active():
            try:
                await self._capture.apply()
            except CaptureError as exc:
                log.error("dns guard: capture apply failed: %s", exc)
                return
        self.redirecting = redirect
        self.transitions.append((self._clock.monotonic(), redirect))
        if redirect:
            log.info("dns: the app's DNS now goes through the proxy")
        else:
            log.warning("dns: the proxy does not answer; DNS redirect removed, the app "
                        "resolves directly through /etc/resolv.conf")

    async def step(self) -> None:
        ok = await self._check()
        self._missed = 0 if ok else self._missed + 1
        if ok and not self.redirecting:
            await self._set(True)
        elif self.redirecting and self._missed >= self.failures:
            await self._set(False)

    async def run(self) -> None:
        while True:
            await self.step()
            await self._clock.sleep(self.interval)
