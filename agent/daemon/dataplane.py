"""The data plane's order, in one place: Envoy up and ready before capture goes
on; capture off before Envoy stops; capture follows Envoy's health (the
configured Envoy-down policy); every new credential generation handed to Envoy.

Either part may be disabled; leftovers of a crashed run are cleaned at start
even when capture is now disabled, so a config change can never strand rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.capture.controller import CaptureController, ipv6_available
from agent.capture.exempt import url_exemptions
from agent.capture.plan import DnsCapture, Exempt
from agent.capture.runner import CaptureError
from agent.config.model import AgentConfig, control_plane_urls, effective_capture
from agent.dns.resolv import nameservers
from agent.dns.table import LISTEN, NameTable
from agent.proxy.user import ProxyUserMissing, resolve_proxy_user
from agent.status.health import Health
from meshcore.clock import Clock

# Types only (the credential modules among them: the entry point builds the data
# plane and starts Envoy before they, and cryptography, are loaded).
if TYPE_CHECKING:
    from agent.credentials import Credentials
    from agent.dns.guard import DnsGuard
    from agent.dns.proxy import DnsProxy
    from agent.istio.dataplane import IstioDataPlane
    from agent.sidecar.ads import XdsServer
    from agent.sidecar.service import Sidecar
    from agent.state.store import AgentState

log = logging.getLogger(__name__)

DRIFT_CHECK_SECONDS = 30.0
PROXY_WATCH_SECONDS = 0.5


class DataPlaneConfigError(Exception):
    """Envoy or capture cannot start with this configuration (exit ``EX_CONFIG``)."""


class DataPlaneDown(Exception):
    """Bring-up failed on this host with a valid config: Envoy never became ready,
    or capture could not be installed and verified (it is rolled back). The agent
    ends with ``EX_UNAVAILABLE`` so systemd restarts it: a bug's exit 1 would be
    wrong, and 78 would stop the restarts for what may pass (a slow host)."""


def _traversable(state_dir: Path) -> None:
    """Envoy (the proxy user) reads its files under ``state_dir/envoy``: the state
    directory must let it pass (search permission only; listing stays private,
    and keys live in 0700/0600 places below it)."""
    state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if not mode & stat.S_IXOTH:
        state_dir.chmod(mode | stat.S_IXOTH)


class DataPlane:
    def __init__(self, config: AgentConfig, health: Health, clock: Clock) -> None:
        self._health = health
        self._clock = clock
        # No IPv6 listener where the kernel has no IPv6 (Envoy could not bind [::]);
        # capture drops its IPv6 rules there too.
        sidecar = replace(config.sidecar, ipv6=config.sidecar.ipv6 and ipv6_available())
        capture = effective_capture(config)
        self.istio: IstioDataPlane | None = None
        self.sidecar: Sidecar | None = None
        if sidecar.enabled:
            # Imported only with the sidecar on: an agent that only keeps the
            # VM's certificate never loads the sidecar's modules.
            from agent.sidecar.service import Sidecar
            from agent.sidecar.settings import EnvoyPaths

            if config.istio is not None:
                # Imported here: static mode never loads grpcio or protobuf.
                from agent.istio.dataplane import IstioDataPlane

                # Envoy is configured by istiod; we serve its certificate over SDS.
                self.istio = IstioDataPlane(config.istio.vm, sidecar,
                                            EnvoyPaths.under(config.state_dir).root)
            self.sidecar = Sidecar(sidecar, config.state_dir, clock=clock,
                                   on_status=self._on_status,
                                   render=self.istio.render if self.istio else None)
        self.capture = CaptureController(capture if capture.enabled else None,
                                         state_dir=config.state_dir, clock=clock)
        self._capture_enabled = config.capture.enabled
        self._proxy = config.proxy
        self._control_plane = control_plane_urls(config)
        self._state_dir = config.state_dir
        self._captured = False
        self._configured = False
        self._xds: XdsServer | None = None
        self._dns = config.dns
        self._envoy: asyncio.Task[None] | None = None  # started early, see start_envoy_early
        self._envoy_prepared = False
        self.dns_proxy: DnsProxy | None = None
        self.dns_guard: DnsGuard | None = None  # both set by start_dns
        self._dns_started = asyncio.Event()
        if self.sidecar is not None:
            health.condition("sidecar", False)
        if self._capture_enabled:
            health.condition("capture", False)

    def _on_status(self, status: object) -> None:
        if self.sidecar is not None:
            self._health.condition("sidecar", self.sidecar.supervisor.ready)
            self._health.detail("sidecar", self.sidecar.supervisor.status().as_dict())

    def prepare_envoy(self) -> bool:
        """Check the proxy user exists (a config error is better found before a
        one-time token is spent), prepare Envoy's files and, on a restart, start
        Envoy early (``start_envoy_early``). Done once: the entry point calls it
        before the daemon's own modules load (``agent.daemon.start``), ``prepare``
        otherwise. True when Envoy was started early."""
        if self._envoy_prepared:
            return self._envoy is not None
        if self.sidecar is not None:
            _traversable(self._state_dir)
        try:
            if self._capture_enabled:
                resolve_proxy_user(self._proxy)  # also with an external proxy
            if self.sidecar is not None:
                self.sidecar.prepare()
        except ProxyUserMissing as exc:
            raise DataPlaneConfigError(str(exc)) from exc
        self._envoy_prepared = True
        return self.start_envoy_early()

    async def envoy_spawned(self) -> None:
        """Until the early Envoy's process exists (or its start failed); at once
        when none was started early."""
        if self._envoy is not None and self.sidecar is not None:
            await self.sidecar.supervisor.spawned()

    async def prepare(self) -> None:
        """Before attesting: ``prepare_envoy`` (if the entry point has not), then
        remove rules a crashed or killed run left behind, while Envoy starts.
        Whatever ends the agent before that removal (a config error) removes them
        on its way out (``remove_capture``)."""
        self.prepare_envoy()
        if self.istio is not None and self.sidecar is not None:
            await self.istio.start(self.sidecar.proxy.gid)
        await self.capture.reconcile_on_start()

    async def configure(self, creds: Credentials, state: AgentState,
                        xds: XdsServer | None = None) -> None:
        """Hand the credentials and mesh settings to Envoy (start-up); with ``xds``
        Envoy gets the ADS bootstrap and its config from the registrar."""
        if self.sidecar is None:
            return
        from agent.sidecar.install import ConfigRejected
        from agent.sidecar.process import EnvoyNotFound
        from agent.sidecar.settings import mesh_settings

        self._xds = xds
        try:
            # Istio mode: the key goes to Envoy over the SDS socket only, never
            # into a file the proxy user could read.
            if self.istio is not None:
                self.istio.publish(creds)
            else:
                self.sidecar.publish(creds.directory)
            await self.sidecar.configure(mesh_settings(state.spiffe_id or "", state.mesh), xds,
                                         check_beside_start=True)
        except (EnvoyNotFound, ConfigRejected) as exc:
            raise DataPlaneConfigError(str(exc)) from exc
        self._configured = True

    async def rotated(self, creds: Credentials, state: AgentState) -> None:
        """After each renewal: Envoy picks the new generation up live."""
        if self.sidecar is None or not self._configured:
            return
        from agent.sidecar.process import SidecarError
        from agent.sidecar.settings import mesh_settings

        if self.istio is not None:
            self.istio.publish(creds)  # pushed to Envoy on its open SDS streams
            return  # the bootstrap does not depend on the certificate
        try:
            self.sidecar.publish(creds.directory)
            await self.sidecar.configure(mesh_settings(state.spiffe_id or "", state.mesh),
                                         self._xds)
        except SidecarError as exc:
            # The old certificate and config stay live; the next rotation retries.
            log.error("could not hand the new certificate to envoy", extra={"error": str(exc)})

    def start_envoy_early(self) -> bool:
        """On a restart, start Envoy on the last run's bootstrap and certificate
        while credentials load and the registrar is asked for settings: its start
        (~100 ms) overlaps theirs instead of following them. Nothing depends on it
        yet: capture goes on only after ``configure`` and a fresh ``/ready``, and
        ``configure`` restarts this Envoy if the bootstrap it installs differs.
        Not in Istio mode (its SDS server holds no certificate before publish) and
        not on a first boot (no bootstrap yet). True when started."""
        if self.sidecar is None or self.istio is not None or self._envoy is not None:
            return False
        paths = self.sidecar.paths
        if not paths.bootstrap.exists() or not paths.current.exists():
            return False
        log.info("starting envoy early on the last bootstrap while credentials load")
        self._envoy = asyncio.create_task(self.sidecar.supervisor.run())
        return True

    async def run_envoy(self) -> None:
        if self._envoy is not None:
            await self._envoy
        elif self.sidecar is not None:
            await self.sidecar.supervisor.run()

    async def stop_early_envoy(self) -> None:
        """Start-up ended before the TaskGroup took Envoy over (no credentials, a
        config error, SIGTERM): stop the early Envoy, never orphan it."""
        if self._envoy is None or self._envoy.done() or self.sidecar is None:
            return
        await self.sidecar.supervisor.shutdown()
        self._envoy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._envoy

    async def start_dns(self, names: NameTable) -> None:
        """The DNS proxy, before capture: the redirect goes on only once it answers."""
        try:
            await self._start_dns(names)
        finally:
            self._dns_started.set()

    async def _start_dns(self, names: NameTable) -> None:
        if not self._dns.enabled:
            return
        # dnspython is imported only here: a quarter second of start-up that agents
        # without the DNS proxy should not pay.
        from agent.dns.guard import DnsGuard, wire_check
        from agent.dns.proxy import DnsProxy

        text = await asyncio.to_thread(self._dns.resolv_conf.read_text)
        upstreams = nameservers(text)
        listen = (LISTEN[0], self._dns.listen_port)
        self.dns_proxy = proxy = DnsProxy(names, upstreams, listen=listen)
        await proxy.start()
        self._health.condition("dns", True)
        wanted = None
        if self._dns.capture and self._capture_enabled:
            # The forwarder runs in this process: its own queries to the nameservers
            # must go direct, so this process's uid is exempt for port 53.
            wanted = DnsCapture(upstreams, to_port=self._dns.listen_port,
                                exempt_uids=(os.getuid(),))
        self.dns_guard = DnsGuard(self.capture if wanted else None, wanted,
                                  wire_check(*listen, serving=lambda: proxy.serving),
                                  self._clock, restart=proxy.restart,
                                  on_change=self._dns_state,
                                  active=lambda: self._captured
                                  and not self.capture.failed_open)
        await self.dns_guard.step()  # records the wish; capture's apply carries it

    def _dns_state(self, guard: DnsGuard) -> None:
        """Whether the proxy answers (if not, the guard has taken the redirect off and
        restarts it): the agent's ``dns`` readiness condition, and its status."""
        self._health.condition("dns", guard.answering)
        self._health.detail("dns", {"answering": guard.answering, "restarts": guard.restarts,
                                    "redirecting": guard.redirecting})

    async def guard_dns(self) -> None:
        # Started beside the bring-up that starts the proxy: the guard exists only once
        # it has (before this wait the daemon never guarded its proxy at all).
        await self._dns_started.wait()
        if self.dns_guard is not None:
            await self.dns_guard.run()

    async def _exemptions(self) -> list[Exempt]:
        exempt: list[Exempt] = []
        for url, why in self._control_plane:
            exempt.extend(await asyncio.to_thread(url_exemptions, url, why))
        return exempt

    async def bring_up(self) -> None:
        """Wait for Envoy, then install and verify capture."""
        # Resolved now, at start, while Envoy gets ready (a lookup is off READY's
        # path that way): the control plane's addresses always go direct.
        exempting = asyncio.ensure_future(self._exemptions()) if self._capture_enabled else None
        try:
            await self._bring_up(exempting)
        finally:
            if exempting is not None:
                exempting.cancel()  # a no-op once awaited; retrieved, never left unseen
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await exempting

    async def _bring_up(self, exempting: asyncio.Future[list[Exempt]] | None) -> None:
        if self.sidecar is not None:
            from agent.sidecar.install import ConfigRejected
            from agent.sidecar.supervisor import SidecarNotReady

            try:
                await self.sidecar.checked()  # a first bootstrap, validated beside the start
            except ConfigRejected as exc:
                raise DataPlaneConfigError(str(exc)) from exc
            try:
                await self.sidecar.supervisor.wait_ready(self.sidecar.config.ready_timeout)
            except SidecarNotReady as exc:
                raise DataPlaneDown(str(exc)) from exc
            self._health.condition("sidecar", True)
        if exempting is not None:
            exempt = await exempting
            log.info("capture exempts the control plane: %s", ", ".join(
                f"{e.why} {e.network} port {e.port}" for e in exempt))
            self.capture.exempt(tuple(exempt))
            try:
                await self.capture.apply()
            except CaptureError as exc:
                raise DataPlaneDown(f"capture not installed: {exc}") from exc
            self._captured = True
            self._health.condition("capture", True)
            log.info("traffic capture installed")

    async def watch(self) -> None:
        """Capture follows Envoy's health; drifted rules (firewalld reload) come back.

        Every capture change happens here, awaited: a failure is logged or ends
        the agent, never lost in a forgotten task."""
        if self.sidecar is None and not self._capture_enabled:
            return  # nothing to follow: an idle agent should not wake twice a second
        was_ready = True
        last_drift = self._clock.monotonic()
        while True:
            await self._clock.sleep(PROXY_WATCH_SECONDS)
            if self.sidecar is not None and self._captured:
                ready = self.sidecar.supervisor.ready
                if was_ready and not ready:
                    self.capture.proxy_down()
                elif ready and not was_ready:
                    await self.capture.proxy_up()
                was_ready = ready
                try:
                    await self.capture.fail_open_if_due()
                except CaptureError as exc:
                    # Capture stays on (fail-closed) and the next pass tries again.
                    log.error("capture fail-open removal failed", extra={"error": str(exc)})
                self._health.condition("capture", not self.capture.failed_open)
            now = self._clock.monotonic()
            if self._captured and now - last_drift >= DRIFT_CHECK_SECONDS:
                last_drift = now
                try:
                    await self.capture.repair_drift()
                except CaptureError as exc:
                    log.error("capture drift repair failed", extra={"error": str(exc)})

    async def shut_down(self) -> None:
        """Capture off first (never leave apps black-holed), then drain Envoy."""
        await self.remove_capture()
        if self.dns_proxy is not None:
            await self.dns_proxy.stop()
        if self.sidecar is not None:
            await self.sidecar.supervisor.shutdown()
        if self.istio is not None:
            await self.istio.stop()

    async def release(self) -> None:
        """Whatever ended the agent (also a failure before Envoy ran): the SDS
        server stops while its event loop still runs (grpcio cannot stop it
        from a closed loop and prints a traceback at exit)."""
        if self.sidecar is not None:
            await self.sidecar.cancel_check()
        if self.istio is not None:
            await self.istio.stop()

    async def remove_capture(self) -> None:
        try:
            await self.capture.remove()
        except CaptureError as exc:
            log.error("could not remove capture", extra={"error": str(exc)})
        else:
            self._captured = False
            if self._capture_enabled:
                self._health.condition("capture", False)

