"""The very first bootstrap (a first boot) is made live at once and validated by
the real Envoy beside Envoy's own start; a rejection still stops the start, and
is never forgotten by an agent killed before the check ended."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from agent.proxy.user import ProxyIdentity
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import ConfigRejected, install_bootstrap, install_first_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import render_bootstrap
from agent.sidecar.sds import SdsMirror
from agent.sidecar.settings import EnvoyPaths
from tests.sidecar.pki import MeshCA
from tests.sidecar.test_render_golden import MESH

ME = ProxyIdentity(os.getuid(), os.getgid())


def _setup(tmp_path: Path, envoy_path: Path, mesh_ca: MeshCA
           ) -> tuple[SidecarConfig, EnvoyPaths, dict[str, Any]]:
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, ME)
    mirror.prepare()
    mirror.publish(mesh_ca.generation(mesh_ca.issue(MESH.spiffe_id)))
    config = SidecarConfig(enabled=True, envoy_path=envoy_path, app_ports=(8080,))
    return config, paths, render_bootstrap(config, MESH, paths)


def _bogus(document: dict[str, Any]) -> dict[str, Any]:
    document["static_resources"]["listeners"][0]["bogus_field"] = 1
    return document


def test_a_good_first_bootstrap_is_live_at_once_and_checked(
        tmp_path: Path, envoy_path: Path, mesh_ca: MeshCA) -> None:
    config, paths, document = _setup(tmp_path, envoy_path, mesh_ca)

    async def run() -> None:
        check = await install_first_bootstrap(config, document, paths,
                                              runner=SubprocessRunner(), user=None)
        assert check is not None
        assert paths.bootstrap.exists()  # live before Envoy has validated it
        await check
        # A live file exists now: the next start validates before it replaces.
        assert await install_first_bootstrap(config, document, paths,
                                             runner=SubprocessRunner(), user=None) is None
        assert await install_bootstrap(config, document, paths,
                                       runner=SubprocessRunner(), user=None) is False

    asyncio.run(run())
    assert sorted(p.name for p in paths.bootstrap.parent.glob("bootstrap*")) == [
        "bootstrap.yaml"]


def test_a_rejected_first_bootstrap_fails_the_check_and_is_removed(
        tmp_path: Path, envoy_path: Path, mesh_ca: MeshCA) -> None:
    config, paths, document = _setup(tmp_path, envoy_path, mesh_ca)

    async def run() -> None:
        check = await install_first_bootstrap(config, _bogus(document), paths,
                                              runner=SubprocessRunner(), user=None)
        assert check is not None
        with pytest.raises(ConfigRejected, match="bogus_field") as info:
            await check
        assert "first one, now removed" in str(info.value)

    asyncio.run(run())
    assert list(paths.bootstrap.parent.glob("bootstrap*")) == []


def test_an_agent_killed_before_the_check_validates_the_file_next_time(
        tmp_path: Path, envoy_path: Path, mesh_ca: MeshCA) -> None:
    config, paths, document = _setup(tmp_path, envoy_path, mesh_ca)
    bad = _bogus(document)

    async def killed() -> None:
        check = await install_first_bootstrap(config, bad, paths,
                                              runner=SubprocessRunner(), user=None)
        assert check is not None
        check.cancel()  # the process ends before its check does
        with pytest.raises(asyncio.CancelledError):
            await check

    asyncio.run(killed())
    assert paths.bootstrap.exists()

    async def next_start() -> None:
        # The same document again: unchanged bytes, but never validated.
        await install_bootstrap(config, bad, paths, runner=SubprocessRunner(), user=None)

    with pytest.raises(ConfigRejected, match="bogus_field"):
        asyncio.run(next_start())
