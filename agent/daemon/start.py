"""``mesh-agent run``: read the config, set up logging, then run the daemon, with
Envoy started before the daemon's own modules are loaded.

On a restart with the sidecar on, Envoy can start on the last run's bootstrap at
once (``DataPlane.start_envoy_early``). Its start takes about 100 ms of its own
CPU and nothing from us until it is ready, so it is spawned before the modules
that only the daemon needs (the identity manager, the registrar client, the
credential store) are imported: loading them, and then the stored credentials,
overlaps Envoy's start instead of preceding it. What READY waits for does not
change: the Envoy that ends up running is ready on the bootstrap ``configure``
installs, and capture is applied and probed after that.

A first boot (no stored credentials) needs a key before anything else can
happen, and the key helper process spends most of its time importing
cryptography: it is started first (``keygen.prestart``), so that start overlaps
the daemon's own, and the attestation hands it its request.

This module imports only what that needs: the config, logging, the data plane and
the key helper's launcher.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.config.model import AgentConfig
from agent.daemon import logs
from agent.daemon.dataplane import DataPlane, DataPlaneConfigError
from agent.identity import keygen
from agent.state.layout import StateDirError, prepare_state_dir
from agent.status.health import Health
from meshcore.clock import SystemClock
from meshcore.exits import EX_CONFIG

log = logging.getLogger("agent.daemon.app")  # the daemon's own logger: one name in the logs


def issuer_url(config: AgentConfig) -> str:
    """Where certificates come from: mesh-registrar, or istiod's CA in Istio mode."""
    if config.istio is not None:
        return f"grpcs://{config.istio.vm.ca}"
    assert config.registrar is not None
    return config.registrar.url.rstrip("/")


async def start_envoy_first(config: AgentConfig, dataplane: DataPlane) -> bool:
    """Start Envoy early (a restart with the sidecar on) and wait until its process
    exists. True when it was started. A state directory or proxy user that is not
    usable starts nothing here: the daemon meets the same error as its first step
    and ends with exit 78, saying why, on its one error path."""
    try:
        prepare_state_dir(config.state_dir)
        started = dataplane.prepare_envoy()
    except (StateDirError, DataPlaneConfigError):
        return False
    await dataplane.envoy_spawned()
    return started


def first_boot(config: AgentConfig) -> bool:
    """No stored credentials to start on (the credential store's ``current`` link,
    agent/credentials/store.py): the agent attests, and needs a key first."""
    try:
        return not (config.state_dir / "credentials" / "current").exists()
    except OSError:  # a state directory we cannot read: the daemon says why, later
        return False


async def _run(config_path: Path, config: AgentConfig) -> int:
    clock = SystemClock()
    health = Health()
    dataplane = DataPlane(config, health, clock)
    try:
        if first_boot(config) and await keygen.prestart():
            log.debug("key helper started ahead of the first attestation")
        await start_envoy_first(config, dataplane)
        # Loaded while Envoy starts (and the key helper imports cryptography).
        from agent.daemon.app import Daemon, log_warnings

        log.debug("daemon modules loaded")
        log_warnings(config)
        return await Daemon(config_path, config, clock=clock, early=(dataplane, health)).run()
    finally:
        await keygen.discard_spare()  # none is left waiting once the agent ends


def run_daemon(config_path: Path) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        logs.setup("info")
        log.error("invalid configuration: %s", exc)
        return EX_CONFIG
    logs.setup(config.log_level)
    log.info("starting", extra={"config": str(config_path), "mesh": config.mesh_type,
                                "issuer": issuer_url(config)})
    return asyncio.run(_run(config_path, config))
