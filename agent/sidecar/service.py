"""The sidecar as the daemon sees it: one object that owns Envoy's files and its
supervisor. The pure parts (render, SDS documents) and the I/O parts (mirror,
validate+install, process) stay in their own modules; this only sequences them.

Order in the daemon::

    sidecar = Sidecar(config.sidecar, config.state_dir)
    sidecar.prepare()                       # proxy user, dirs, SDS documents
    sidecar.publish(store.current_link)     # after every CredentialStore.commit()
    await sidecar.configure(mesh)           # render, validate, install (raises)
    tg.create_task(sidecar.supervisor.run())
    await sidecar.supervisor.wait_ready()   # before capture and READY=1
    ...
    await sidecar.supervisor.shutdown()     # SIGTERM: after capture is removed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.proxy.user import ProxyIdentity, resolve_proxy_user
from agent.sidecar.ads import XdsServer, render_ads_bootstrap
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import install_bootstrap, install_first_bootstrap
from agent.sidecar.process import Runner, SubprocessRunner
from agent.sidecar.render import render_bootstrap
from agent.sidecar.sds import Chown, Generation, SdsMirror, os_chown
from agent.sidecar.settings import EnvoyPaths, MeshSettings
from agent.sidecar.supervisor import LOG, EnvoySupervisor, Probe, SidecarStatus
from meshcore.clock import Clock, SystemClock


class Sidecar:
    """Cheap to construct; ``prepare()`` does the first I/O."""

    def __init__(
        self, config: SidecarConfig, state_dir: Path, *,
        runner: Runner | None = None, probe: Probe | None = None, chown: Chown = os_chown,
        proxy: ProxyIdentity | None = None, clock: Clock | None = None,
        logger: logging.Logger = LOG, on_status: Callable[[SidecarStatus], None] | None = None,
        render: Callable[[MeshSettings], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        # Istio mode renders an ADS bootstrap instead of the static one.
        self._render = render
        self.paths = EnvoyPaths.under(state_dir)
        self._runner: Runner = runner or SubprocessRunner()
        self._probe = probe
        self._chown = chown
        self._proxy = proxy
        self._clock = clock or SystemClock()
        self._logger = logger
        self._on_status = on_status
        self._mirror: SdsMirror | None = None
        self._supervisor: EnvoySupervisor | None = None
        self._first_check: asyncio.Task[None] | None = None

    @property
    def proxy(self) -> ProxyIdentity:
        if self._proxy is None:
            raise RuntimeError("Sidecar.prepare() first")
        return self._proxy

    @property
    def supervisor(self) -> EnvoySupervisor:
        if self._supervisor is None:
            self._supervisor = EnvoySupervisor(
                self.config, self.paths.bootstrap, user=self.proxy, runner=self._runner,
                probe=self._probe, clock=self._clock, logger=self._logger,
                on_status=self._on_status)
        return self._supervisor

    def prepare(self) -> None:
        """Resolve the proxy user (ProxyUserMissing), create ``envoy/`` and the SDS files."""
        if self._proxy is None:
            self._proxy = resolve_proxy_user(self.config.proxy)
        self._mirror = SdsMirror(self.paths, self._proxy, chown=self._chown)
        self._mirror.prepare()

    def publish(self, generation_dir: Path) -> str:
        """Mirror a credential generation (``credentials/current`` or ``credentials/gNNN``)
        for Envoy and make it live; Envoy picks it up without a restart."""
        if self._mirror is None:
            raise RuntimeError("Sidecar.prepare() first")
        generation = Generation.read(generation_dir)
        self._mirror.publish(generation)
        self._logger.info("certificate generation %s handed to envoy", generation.name)
        return generation.name

    async def configure(self, mesh: MeshSettings, xds: XdsServer | None = None, *,
                        check_beside_start: bool = False) -> bool:
        """Render, validate and install the bootstrap for ``mesh`` (Istio mode's
        renderer when one was given; the ADS bootstrap when ``xds`` is given);
        restart a running Envoy when the file changed (e.g. new mesh settings after
        a renewal). In xds mode the bootstrap depends only on the identity and the
        registrar's address, so mesh changes arrive as ADS pushes and never restart
        Envoy. Raises ConfigRejected/EnvoyNotFound with the old file kept live.

        ``check_beside_start`` (start-up): a very first bootstrap is made live at
        once and validated while Envoy starts; ``checked()`` then raises what
        validating it before would have raised."""
        if self._render is not None:
            document = self._render(mesh)
        elif xds is not None:
            document = render_ads_bootstrap(mesh, xds, self.paths,
                                            admin_port=self.config.admin_port)
        else:
            document = render_bootstrap(self.config, mesh, self.paths)
        if check_beside_start and self._first_check is None:
            self._first_check = await install_first_bootstrap(
                self.config, document, self.paths,
                runner=self._runner, user=self.proxy, chown=self._chown)
            if self._first_check is not None:
                return True
        changed = await install_bootstrap(
            self.config, document, self.paths,
            runner=self._runner, user=self.proxy, chown=self._chown)
        if changed and self._supervisor is not None:
            # Also an Envoy still being spawned (started early on the last
            # bootstrap): restart() replaces it once it exists.
            await self._supervisor.restart()
        return changed

    async def checked(self) -> None:
        """The first bootstrap's validation (``configure(check_beside_start=True)``):
        returns once Envoy accepted it; raises ConfigRejected (the file removed)."""
        if self._first_check is not None:
            await self._first_check

    async def cancel_check(self) -> None:
        """Stopping: end a validation still running (and its Envoy process)."""
        check, self._first_check = self._first_check, None
        if check is None:
            return
        check.cancel()  # a no-op once it has ended
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await check
