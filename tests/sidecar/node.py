"""One sidecar host for tests: the agent's credential store fed by the real
registrar, the SDS mirror, the rendered+validated bootstrap, and the real
supervisor running the real Envoy inside a network namespace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.credentials import Credentials, CredentialStore
from agent.proxy.user import ProxyIdentity
from agent.registrar_client.client import RegistrarClient
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import install_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import render_bootstrap
from agent.sidecar.service import Sidecar
from agent.sidecar.settings import MeshSettings, mesh_settings
from agent.sidecar.supervisor import EnvoySupervisor
from tests.sidecar.identity import RegistrarIdentity
from tests.sidecar.netns import NetnsLoop

PROXY = ProxyIdentity(1337, 1337)  # Istio's proxy uid/gid; no passwd entry needed


class LineCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Node:
    """A VM (or mesh peer): its identity, files, Envoy and access log."""

    name: str
    netns: str
    state_dir: Path
    client: RegistrarClient
    token: str
    config: SidecarConfig
    loop: NetnsLoop | None = None
    supervisor: EnvoySupervisor | None = None
    access: LineCollector = field(default_factory=LineCollector)
    envoy_log: LineCollector = field(default_factory=LineCollector)

    def __post_init__(self) -> None:
        self.store = CredentialStore(self.state_dir / "credentials")
        self.identity = RegistrarIdentity(self.client, self.token, self.store, self.name)
        self.logger = logging.getLogger(f"test.sidecar.{self.name}.{id(self)}")
        # The daemon's facade, exactly as the lead wires it (proxy given, not looked up:
        # uid 1337 has no passwd entry here).
        self.sidecar = Sidecar(self.config, self.state_dir, proxy=PROXY, logger=self.logger)
        self.paths = self.sidecar.paths
        self.logger.getChild("access").addHandler(self.access)
        self.logger.getChild("envoy").addHandler(self.envoy_log)
        self.logger.setLevel(logging.DEBUG)
        self.mesh: MeshSettings | None = None

    def rotate(self) -> Credentials:
        """Attest (first time) or renew over mTLS, store a generation, mirror it for Envoy."""
        creds, issued = asyncio.run(self.identity.refresh())
        self.mesh = mesh_settings(issued.spiffe_id, issued.mesh)
        self.sidecar.publish(self.store.current_link)
        return creds

    async def _install(self, config: SidecarConfig) -> bool:
        assert self.mesh is not None
        return await install_bootstrap(config, render_bootstrap(config, self.mesh, self.paths),
                                       self.paths, runner=SubprocessRunner(), user=PROXY)

    def start(self) -> None:
        self.store.prepare()
        self.sidecar.prepare()
        self.rotate()
        assert self.mesh is not None
        self.loop = NetnsLoop(self.netns)
        self.loop.run(self.sidecar.configure(self.mesh))
        self.supervisor = self.loop.run(self._make_supervisor())
        self.run_future = self.loop.spawn(self.supervisor.run())
        self.loop.run(self.supervisor.wait_ready(30))

    async def _make_supervisor(self) -> EnvoySupervisor:
        return self.sidecar.supervisor

    def reconfigure(self, **changes: object) -> bool:
        """Render + validate + install a changed config (raises ConfigRejected)."""
        assert self.loop is not None
        candidate = replace(self.config, **changes)  # type: ignore[arg-type]
        changed = self.loop.run(self._install(candidate))
        self.config = candidate
        return changed

    def stop(self) -> None:
        if self.loop is None:
            return
        if self.supervisor is not None:
            self.loop.run(self.supervisor.shutdown())
            self.run_future.result(15)
        self.loop.close()
        self.loop = None

    async def until(self, predicate: Callable[[], bool], timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
