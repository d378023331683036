"""The agent process: builds the parts from config and runs them as tasks in
one TaskGroup. The first unexpected failure ends the process non-zero so
systemd restarts it; ``CannotContinue`` ends it with its own exit code.

Time and jitter come from the injected ``Clock`` and ``Rng`` alone."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from agent.attest import registry
from agent.attest.base import Attestor
from agent.config import ConfigError, load_config
from agent.config.model import AgentConfig
from agent.credentials import CredentialStore
from agent.daemon.dataplane import DataPlane, DataPlaneConfigError, DataPlaneDown
from agent.daemon.notify import Notifier
from agent.daemon.workload import Workload
from agent.identity.bundle import BundlePoller
from agent.identity.host import local_host_info
from agent.identity.issuer import IssuerClient
from agent.identity.manager import CannotContinue, IdentityManager, Tuning
from agent.registrar_client import RegistrarClient
from agent.registrar_client.client import ExtraAnchors
from agent.registrar_client.workload import WorkloadSettings
from agent.state.layout import StateDirError, prepare_state_dir
from agent.state.store import StateFile
from agent.status.health import Health
from agent.status.server import StatusServer
from meshcore.clock import Clock, Rng, SystemClock, system_rng
from meshcore.exits import EX_CONFIG, EX_OK, EX_UNAVAILABLE

if TYPE_CHECKING:
    from agent.istio.registrar_token import RegistrarTokenSource
    from agent.sidecar.ads import XdsServer

log = logging.getLogger(__name__)
_T = TypeVar("_T")

STATUS_LINE_SECONDS = 5.0
# Not ready while xds mode waits for the registrar's workload settings at start.
SETTINGS_CONDITION = "registrar_settings"

# What SIGHUP does with each changed part of the config. Applied parts take
# effect at once; the others are bound into running parts (a listening
# socket, Envoy's bootstrap, installed rules, the chosen attestor, open files)
# and keep their running value until a restart.
RELOAD_APPLIES = ("registrar", "istio", "identity", "rotation", "log_level")
RELOAD_REJECTS = ("mesh", "attestation", "status", "state_dir", "proxy", "sidecar", "capture",
                  "workload", "dns")
# config section -> AgentConfig field, where they differ
_FIELDS = {"identity": "key_type", "mesh": "mesh_type"}


def config_field(section: str) -> str:
    return _FIELDS.get(section, section)


class _Stop(Exception):
    """Raised inside the TaskGroup to end it on SIGTERM/SIGINT."""


def tuning_of(config: AgentConfig) -> Tuning:
    r = config.rotation
    return Tuning(key_type=config.key_type, renew_at=r.renew_at, jitter=r.jitter,
                  min_backoff=r.min_backoff, max_backoff=r.max_backoff)


def client_of(config: AgentConfig, anchors: ExtraAnchors | None = None) -> IssuerClient:
    """mesh-registrar, or istiod's CA in Istio mode. ``anchors``: the mesh bundle
    the agent holds, trusted beside ``registrar.ca_file`` (a rotated CA)."""
    if config.istio is not None:
        # Istio's modules are imported only in Istio mode.
        from agent.istio.ca_client import IstioCAClient

        return IstioCAClient(config.istio.vm, cert_ttl=config.istio.cert_ttl,
                             timeout=config.istio.timeout,
                             token_from_registrar=config.istio.token_from_registrar)
    assert config.registrar is not None
    return RegistrarClient(config.registrar.url, config.registrar.ca_file,
                           timeout=config.registrar.timeout, extra_anchors=anchors)


def log_warnings(config: AgentConfig) -> None:
    """Deprecated keys still work; say where each one is so it gets moved."""
    for warning in config.warnings:
        log.warning("configuration: %s", warning)


def registrar_token_source(config: AgentConfig, clock: Clock) -> RegistrarTokenSource | None:
    """Istio mode, ``token_source: registrar``: attest to mesh-registrar with the
    ``attestation:`` section's evidence, then buy istiod's token with that identity."""
    if config.istio is None or not config.istio.token_from_registrar:
        return None
    from agent.istio.registrar_token import RegistrarTokenSource

    assert config.registrar is not None
    return RegistrarTokenSource(
        RegistrarClient(config.registrar.url, config.registrar.ca_file,
                        timeout=config.registrar.timeout),
        lambda: registry.choose(config.attestation), state_dir=config.state_dir,
        key_type=config.key_type, clock=clock, host=local_host_info,
        audience=config.istio.token_audience)


def attestor_of(config: AgentConfig, clock: Clock,
                source: RegistrarTokenSource | None = None) -> Callable[[], Awaitable[Attestor]]:
    istio = config.istio
    if source is not None:
        async def from_registrar() -> Attestor:
            from agent.istio.registrar_token import RegistrarTokenAttestor

            return RegistrarTokenAttestor(source)
        return from_registrar
    if istio is not None:
        async def istio_token() -> Attestor:
            from agent.istio.attestor import IstioTokenAttestor

            return IstioTokenAttestor(istio.vm.token_path, clock)
        return istio_token
    return lambda: registry.choose(config.attestation)


class Daemon:
    """``early``: the data plane and its health, built by the entry point to start
    Envoy before this module loaded (``agent.daemon.start``); built here without."""

    def __init__(self, config_path: Path, config: AgentConfig, *,
                 clock: Clock | None = None, rng: Rng | None = None,
                 notifier: Notifier | None = None,
                 early: tuple[DataPlane, Health] | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.clock = clock or SystemClock()
        rng = rng or system_rng()
        self.notifier = notifier or Notifier()
        self.health = early[1] if early is not None else Health()
        state_dir = config.state_dir
        self.token_source = registrar_token_source(config, self.clock)
        self.manager = IdentityManager(
            store=CredentialStore(state_dir / "credentials"),
            state_file=StateFile(state_dir / "state.json"),
            client=client_of(config, self._held_bundle),
            choose_attestor=attestor_of(config, self.clock, self.token_source),
            clock=self.clock, rng=rng, health=self.health, tuning=tuning_of(config),
            host=local_host_info)
        self.dataplane = early[0] if early is not None else DataPlane(config, self.health,
                                                                      self.clock)
        self.bundle = BundlePoller(self.manager, self._registrar_client,
                                   self._bundle_interval, self.clock)
        # Istio mode has no workload API (istiod registers VMs by WorkloadEntry).
        self.workload = Workload(config, self._registrar_client if config.istio is None
                                 else None, self.clock, rng=rng)
        self._up = asyncio.Event()
        self.manager.on_rotated.append(
            lambda creds: self.dataplane.rotated(creds, self.manager.state))
        self.status = StatusServer(self.health, self.clock, host=config.status.host,
                                   port=config.status.port) if config.status.enabled else None
        self._stop = asyncio.Event()

    # -- signals -------------------------------------------------------------------
    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP: re-read config and apply, or explicitly reject, each changed
        section; a config that does not validate is rejected whole."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("sighup: rejected the new configuration; keeping the running one",
                      extra={"error": str(exc)})
            self.notifier.ready(self._summary())
            return
        changed = [name for name in (*RELOAD_APPLIES, *RELOAD_REJECTS)
                   if getattr(new, config_field(name)) != getattr(self.config, config_field(name))]
        applied = [name for name in changed if name in RELOAD_APPLIES]
        rejected = [name for name in changed if name in RELOAD_REJECTS]
        # A rejected section keeps its running value, so self.config stays what runs.
        self.config = replace(new, **{config_field(name): getattr(self.config, config_field(name))
                                      for name in rejected})
        log_warnings(self.config)
        self.manager.tuning = tuning_of(self.config)
        replaced, self.manager.client = self.manager.client, client_of(self.config,
                                                                       self._held_bundle)
        if isinstance(replaced, RegistrarClient):
            replaced.close()  # its kept connection; a call in flight still ends
        logging.getLogger().setLevel(self.config.log_level.upper())
        self.manager.renew_soon()
        log.info("sighup: %s", reload_summary(applied, rejected),
                 extra={"applied": ",".join(applied) or "none",
                        "rejected": ",".join(rejected) or "none"})
        self.notifier.ready(self._summary())

    def _summary(self) -> str:
        return self.health.current.summary(self.clock.now())

    # -- tasks ---------------------------------------------------------------------
    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await self.clock.sleep(interval)

    async def _status_lines(self) -> None:
        while True:
            self.manager.refresh_clock()
            self.notifier.status(self._summary())
            await self.clock.sleep(STATUS_LINE_SECONDS)

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        self.health.update(phase="stopping")
        self.notifier.stopping()
        # Callers first: draining takes this VM out of their endpoints before
        # capture goes off and Envoy drains.
        try:
            await self.workload.drain()
        except Exception as exc:  # any failure: never block the stop order
            log.error("could not report draining", extra={"error": str(exc)})
        await self.dataplane.shut_down()
        raise _Stop

    async def _bring_up(self) -> None:
        await self.dataplane.start_dns(self.workload.names)
        try:
            await self.dataplane.bring_up()
        except DataPlaneDown as exc:
            # Ends the TaskGroup like any CannotContinue: capture removed, exit 69.
            raise CannotContinue(f"data plane not up: {exc}", EX_UNAVAILABLE) from exc
        except DataPlaneConfigError as exc:  # Envoy refused the first bootstrap: exit 78
            raise CannotContinue(f"cannot start the sidecar: {exc}", EX_CONFIG) from exc
        self._up.set()
        self.notifier.ready(self._summary())
        creds = self.health.current.credentials
        log.info("ready", extra={"spiffe_id": creds.spiffe_id if creds else None})

    async def _workload(self) -> None:
        """Probe and report only once Envoy and capture are up: healthy means
        callers may send, so the data plane must be ready for them."""
        await self._up.wait()
        await self.workload.run()

    def _held_bundle(self) -> bytes | None:
        creds = self.health.current.credentials
        try:
            return creds.bundle_path.read_bytes() if creds is not None else None
        except OSError:
            return None

    def _bundle_interval(self) -> float:
        registrar = self.config.registrar
        return registrar.bundle_poll_interval if registrar is not None else 300.0

    def _registrar_client(self) -> RegistrarClient:
        client = self.manager.client
        assert isinstance(client, RegistrarClient)  # static mode only
        return client

    def _xds(self, settings: WorkloadSettings | None) -> XdsServer | None:
        """Where Envoy gets its config: the registrar's ADS server, or None (static).

        ``auto`` follows the registrar: xds when its settings name an xDS port.
        Raises DataPlaneConfigError for ``xds`` against a registrar without it."""
        mode = self.config.sidecar.mode
        port = settings.xds_port if settings is not None else None
        if mode == "static" or not self.config.sidecar.enabled or self.config.registrar is None:
            return None
        if port is None:
            if mode == "xds":
                raise DataPlaneConfigError(
                    "sidecar.mode is xds but the registrar offers no xDS server "
                    "(its workload settings have no xds port)")
            return None
        from agent.sidecar.ads import XdsServer

        return XdsServer(urlsplit(self.config.registrar.url).hostname or "", port)

    async def _until_stop(self, work: Awaitable[_T]) -> tuple[_T] | None:
        """``(result,)`` of ``work``, or None when SIGTERM came first (work cancelled)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            return None
        return (task.result(),)

    async def _wait_settings(self) -> WorkloadSettings | None:
        """xds mode: the settings, however long the registrar takes. Meanwhile the
        agent is not ready, and status and systemd say why."""
        def waiting(error: str) -> None:
            self.health.condition(SETTINGS_CONDITION, False)
            self.health.detail("xds", {"state": "waiting for the registrar's workload "
                                                "settings", "last_error": error})
            self.notifier.status(f"not ready: waiting for the registrar's workload "
                                 f"settings (xDS port): {error}")
        settings = await self.workload.wait_settings(waiting)
        if SETTINGS_CONDITION in self.health.current.conditions:
            self.health.condition(SETTINGS_CONDITION, True)
            self.health.detail("xds", {"state": "settings received"})
            log.info("workload settings received")
        return settings

    async def run(self) -> int:
        self._install_signals()
        if self.status is not None:
            await self.status.start()
        try:
            # Pinged from the start: a first attestation that waits on the registrar
            # must not look like a hung agent. In a TaskGroup, so a failing
            # watchdog ends the agent instead of dying unseen.
            async with asyncio.TaskGroup() as group:
                watchdog = group.create_task(self._watchdog())
                try:
                    return await self._run()
                finally:
                    watchdog.cancel()
        finally:
            self.health.update(phase="stopping")
            self.notifier.stopping()
            # Whatever ended us, a dead proxy must not keep capturing traffic.
            await self.dataplane.remove_capture()
            await self.dataplane.release()
            if self.status is not None:
                await self.status.stop()
            if isinstance(self.manager.client, RegistrarClient):
                self.manager.client.close()
            log.info("stopped")

    async def _run(self) -> int:
        try:
            prepare_state_dir(self.config.state_dir)
        except StateDirError as exc:
            log.error("%s", exc)
            self.notifier.status(f"failed: {exc}")
            return EX_CONFIG
        try:
            try:
                await self.dataplane.prepare()  # starts Envoy early on a restart
            except DataPlaneConfigError as exc:
                log.error("cannot start the sidecar: %s", exc)
                self.notifier.status(f"failed: {exc}")
                return EX_CONFIG
            return await self._serve()
        finally:
            # Only if start-up ended before the TaskGroup took Envoy over.
            await self.dataplane.stop_early_envoy()

    async def _serve(self) -> int:
        self.notifier.status("obtaining credentials")
        try:
            started = await self._until_stop(self.manager.start())
        except CannotContinue as exc:
            log.error("cannot obtain credentials: %s", exc)
            self.notifier.status(f"failed: {exc}")
            return exc.exit_code
        if started is None:
            return EX_OK
        # Only an explicit ``sidecar.mode: xds`` waits for the settings (the xDS port
        # is in them); otherwise one try, so a registrar that is down never delays a
        # start on cached credentials.
        if self.config.sidecar.mode == "xds" and self.config.registrar is not None:
            waited = await self._until_stop(self._wait_settings())
            if waited is None:
                return EX_OK
            settings = waited[0]
        else:
            settings = await self.workload.fetch()
        try:
            xds = self._xds(settings)
            log.info("sidecar mode: %s", f"xds ({xds.host}:{xds.port})" if xds else "static")
            await self.dataplane.configure(started[0], self.manager.state, xds)
        except DataPlaneConfigError as exc:
            log.error("cannot start the sidecar: %s", exc)
            self.notifier.status(f"failed: {exc}")
            return EX_CONFIG
        fatal: list[CannotContinue] = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.dataplane.run_envoy())
                group.create_task(self._bring_up())
                group.create_task(self.dataplane.watch())
                group.create_task(self.dataplane.guard_dns())
                group.create_task(self._workload())
                group.create_task(self.manager.run())
                if self.config.istio is None:
                    group.create_task(self.bundle.run())
                if self.token_source is not None:
                    group.create_task(self.token_source.keep_alive(
                        min_backoff=self.config.rotation.min_backoff,
                        max_backoff=self.config.rotation.max_backoff))
                group.create_task(self._status_lines())
                group.create_task(self._until_stopped())
        except* _Stop:
            pass
        except* CannotContinue as group_exc:
            fatal.extend(e for e in group_exc.exceptions if isinstance(e, CannotContinue))
        if fatal:
            log.error("%s", fatal[0])
            self.notifier.status(f"failed: {fatal[0]}")
            return fatal[0].exit_code
        return EX_OK


def reload_summary(applied: list[str], rejected: list[str]) -> str:
    """``applied log_level; rejected attestation: needs a restart``."""
    parts = [f"applied {', '.join(applied)}"] if applied else []
    if rejected:
        parts.append(f"rejected {', '.join(rejected)}: "
                     f"{'needs' if len(rejected) == 1 else 'need'} a restart")
    return "; ".join(parts) or "no change"

