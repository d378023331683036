"""Validate a rendered bootstrap with Envoy itself, then make it live atomically.

The candidate is written next to the live file, checked with
``envoy --mode validate`` run as the proxy user (so a file Envoy could not
read fails here, not at start), and only then renamed over the live file. A
rejected candidate is removed and the live file is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from agent.proxy.user import ProxyIdentity
from agent.sidecar.config import SidecarConfig
from agent.sidecar.process import Runner, SidecarError, envoy_argv
from agent.sidecar.render import to_yaml
from agent.sidecar.sds import Chown, os_chown
from agent.sidecar.settings import EnvoyPaths
from meshcore.durable import fsync_dir, write_atomic

VALIDATE_TIMEOUT = 60.0
_TAIL = 6


class ConfigRejected(SidecarError):
    """Envoy refused the rendered bootstrap; the previous one stays live."""

    def __init__(self, candidate: Path, live: Path, output: str) -> None:
        lines = [ln for ln in output.splitlines() if ln.strip()][-_TAIL:]
        super().__init__(
            f"envoy rejected the rendered bootstrap {candidate}; {live} is unchanged:\n  "
            + "\n  ".join(lines))
        self.output = output


async def validate_bootstrap(
    config: SidecarConfig, path: Path, *, runner: Runner, user: ProxyIdentity | None,
    timeout: float = VALIDATE_TIMEOUT,
) -> tuple[bool, str]:
    """Run ``envoy --mode validate``; (ok, combined output)."""
    process = await runner.start(envoy_argv(config, path, validate=True), user=user)
    try:
        out, err = await asyncio.wait_for(_collect(process), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False, f"envoy --mode validate did not finish within {timeout:g}s"
    text = (out + err).decode(errors="replace")
    return process.returncode == 0, text


async def _collect(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Both outputs and the exit; unlike ``communicate()`` this reads the readers
    themselves, so it works for a stdout pipe the runner made (process.py)."""
    assert process.stdout is not None and process.stderr is not None
    out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
    await process.wait()
    return out, err


async def install_bootstrap(
    config: SidecarConfig, document: dict[str, Any], paths: EnvoyPaths, *,
    runner: Runner, user: ProxyIdentity | None, chown: Chown = os_chown,
) -> bool:
    """Make ``document`` the live bootstrap if Envoy accepts it.

    Returns True when the live file changed (Envoy must be restarted to use a
    new static bootstrap), False when it was already identical. Raises
    ConfigRejected (live file kept) or EnvoyNotFound.
    """
    data = to_yaml(document).encode()
    live = paths.bootstrap
    with contextlib.suppress(FileNotFoundError):
        if live.read_bytes() == data:
            return False
    candidate = live.with_name("bootstrap.candidate.yaml")
    write_atomic(candidate, data, mode=0o640)
    try:
        if user is not None:
            chown(candidate, os.geteuid(), user.gid)
        ok, output = await validate_bootstrap(config, candidate, runner=runner, user=user)
        if not ok:
            raise ConfigRejected(candidate, live, output)
        os.replace(candidate, live)
        fsync_dir(live.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
    return True
