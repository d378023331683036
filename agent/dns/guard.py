"""The DNS proxy's supervisor and fail-safe: the app's DNS is redirected to the
proxy only while the proxy answers, and a proxy that stops answering is
restarted.

Every ``interval`` the guard asks: are both listeners alive (``serving``), and
does the proxy answer, over the wire on 127.0.0.1:15053, a reserved name it
answers itself (no upstream involved)? After ``failures`` missed answers in a
row (3 by default: the probe is answered by the agent's own event loop, so
one busy second on a loaded VM must not take the redirect off):

- it re-applies capture without the DNS redirect, so the app's queries go
  straight to the nameservers of /etc/resolv.conf (capture's other rules are
  untouched: the same verified, atomic apply);
- it restarts the proxy (closes and binds its listeners again), and tries
  again after twice as many misses each time that does not help, so a port
  someone else holds is not retried every second;
- it reports the proxy as not answering (``on_change``: the daemon's ``dns``
  readiness condition and status detail).

Once the proxy answers again the redirect returns and ``on_change`` says so.

The guard runs in the agent, beside the proxy: if the whole agent dies,
systemd restarts it and its start removes a crashed run's rules
(``reconcile_on_start``), so the redirect outlives the agent at most for the
restart delay. A hung agent stops both; systemd's watchdog ends it.
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
Restart = Callable[[], Awaitable[None]]
MAX_RESTART_SPACING = 64  # misses between restart attempts, at most


def wire_check(host: str, port: int, timeout: float = 1.0,
               serving: Callable[[], bool] = lambda: True) -> Check:
    """Both listeners alive (``serving``), and an answer NOERROR for ``PROBE_NAME``."""
    async def check() -> bool:
        if not serving():
            return False
        try:
            answer = await dns.asyncquery.udp(dns.message.make_query(PROBE_NAME, "A"), host,
                                              timeout=timeout, port=port)
        except (dns.exception.DNSException, OSError):
            return False
        return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)
    return check


class DnsGuard:
    def __init__(self, capture: CaptureController | None, dns_capture: DnsCapture | None,
                 check: Check, clock: Clock, *, interval: float = 1.0, failures: int = 3,
                 active: Callable[[], bool] = lambda: True, restart: Restart | None = None,
                 on_change: Callable[[DnsGuard], None] = lambda guard: None) -> None:
        """``capture``/``dns_capture`` None: no redirect to keep (DNS without capture)."""
        self._capture = capture
        # False while capture is off (not yet on, or failed open): then only the
        # wish is recorded, and capture's own next apply carries it.
        self._active = active
        self._dns = dns_capture
        self._check = check
        self._clock = clock
        self._restart = restart
        self._on_change = on_change
        self.interval = interval
        self.failures = failures
        self._missed = 0
        self._next_restart = failures
        self.answering = True
        self.restarts = 0
        self.redirecting = capture is not None and capture.dns_capture is not None
        self.transitions: list[tuple[float, bool]] = []  # (monotonic, redirecting)

    async def _set(self, redirect: bool) -> None:
        assert self._capture is not None
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

    async def _restart_proxy(self, restart: Restart) -> None:
        self._next_restart = min(self._missed * 2, self._missed + MAX_RESTART_SPACING)
        self.restarts += 1
        log.warning("dns: restarting the proxy (attempt %d)", self.restarts)
        try:
            await restart()
        except OSError as exc:
            log.error("dns: the proxy could not restart: %s", exc)

    async def step(self) -> None:
        ok = await self._check()
        self._missed = 0 if ok else self._missed + 1
        before = (self.answering, self.redirecting, self.restarts)
        if ok:
            self.answering = True
            self._next_restart = self.failures
            if not self.redirecting and self._dns is not None:
                await self._set(True)
        elif self._missed >= self.failures:
            self.answering = False
            if self.redirecting:
                await self._set(False)
            if self._restart is not None and self._missed >= self._next_restart:
                await self._restart_proxy(self._restart)
        if (self.answering, self.redirecting, self.restarts) != before:
            self._on_change(self)

    async def run(self) -> None:
        while True:
            await self.step()
            await self._clock.sleep(self.interval)
