"""One sidecar host for tests: credential store + SDS mirror + rendered bootstrap
+ the real supervisor running the real Envoy inside a network namespace."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.credentials import CredentialStore, Credentials
from agent.identity.keys import generate_key
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import install_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import render_bootstrap
from agent.sidecar.sds import Generation, ProxyIdentity, SdsMirror
from agent.sidecar.settings import EnvoyPaths, MeshSettings
from agent.sidecar.supervisor import EnvoySupervisor
from tests.sidecar.netns import NetnsLoop
from tests.sidecar.pki import MeshCA

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
    ca: MeshCA
    mesh: MeshSettings
    config: SidecarConfig
    loop: NetnsLoop | None = None
    supervisor: EnvoySupervisor | None = None
    access: LineCollector = field(default_factory=LineCollector)
    envoy_log: LineCollector = field(default_factory=LineCollector)

    def __post_init__(self) -> None:
        self.paths = EnvoyPaths.under(self.state_dir)
        self.store = CredentialStore(self.state_dir / "credentials")
        self.mirror = SdsMirror(self.paths, PROXY)
        self.logger = logging.getLogger(f"test.sidecar.{self.name}")
        self.logger.getChild("access").addHandler(self.access)
        self.logger.getChild("envoy").addHandler(self.envoy_log)
        self.logger.setLevel(logging.DEBUG)

    def rotate(self, ttl: dt.timedelta = dt.timedelta(hours=1)) -> Credentials:
        """A new key and cert in the agent's store, then mirrored for Envoy."""
        key = generate_key("ecdsa-p256")
        chain, _ = self.ca.sign(key.public_key(), self.mesh.spiffe_id, ttl)  # type: ignore[arg-type]
        creds = self.store.commit(key, chain, self.ca.bundle_pem)
        self.mirror.publish(Generation.read(self.store.current_link))
        return creds

    async def _install(self, config: SidecarConfig) -> bool:
        return await install_bootstrap(config, render_bootstrap(config, self.mesh, self.paths),
                                       self.paths, runner=SubprocessRunner(), user=PROXY)

    def start(self) -> None:
        self.store.prepare()
        self.mirror.prepare()
        self.rotate()
        self.loop = NetnsLoop(self.netns)
        self.loop.run(self._install(self.config))
        self.supervisor = self.loop.run(self._make_supervisor())
        self.run_future = self.loop.spawn(self.supervisor.run())
        self.loop.run(self.supervisor.wait_ready(30))

    async def _make_supervisor(self) -> EnvoySupervisor:
        return EnvoySupervisor(self.config, self.paths.bootstrap, user=PROXY, logger=self.logger)

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

    async def until(self, predicate: object, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.05)
