"""Validate a rendered bootstrap with Envoy itself, then make it live atomically.

The candidate is written next to the live file, checked with
``envoy --mode validate`` run as the proxy user (so a file Envoy could not
read fails here, not at start), and only then renamed over the live file. A
rejected candidate is removed and the live file is untouched.

The very first bootstrap (no live file yet: a first boot) has no last good file
to keep and no Envoy running on one, so ``install_first_bootstrap`` makes it live
at once and validates it beside Envoy's own start instead of before it (each
takes about 100 ms of a core). A rejection still stops the start: the caller
awaits the check before anything counts as ready, and the rejected file is
removed, so the next start validates again.
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

    def __init__(self, candidate: Path, live: Path, output: str, *, first: bool = False) -> None:
        lines = [ln for ln in output.splitlines() if ln.strip()][-_TAIL:]
        kept = "it was the first one, now removed" if first else f"{live} is unchanged"
        super().__init__(
            f"envoy rejected the rendered bootstrap {candidate}; {kept}:\n  "
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
    except asyncio.CancelledError:  # the agent is stopping: leave no validator behind
        if process.returncode is None:
            process.kill()
        await process.wait()
        raise
    text = (out + err).decode(errors="replace")
    return process.returncode == 0, text


async def _collect(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Both outputs and the exit; unlike ``communicate()`` this reads the readers
    themselves, so it works for a stdout pipe the runner made (process.py)."""
    assert process.stdout is not None and process.stderr is not None
    out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
    await process.wait()
    return out, err


def _stage(paths: EnvoyPaths, data: bytes, user: ProxyIdentity | None, chown: Chown) -> Path:
    """``data`` written next to the live bootstrap, owned and readable by the proxy
    user before it is validated or gets the live name."""
    candidate = paths.bootstrap.with_name("bootstrap.candidate.yaml")
    write_atomic(candidate, data, mode=0o640)
    if user is not None:
        try:
            chown(candidate, os.geteuid(), user.gid)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
    return candidate


def _unchecked(paths: EnvoyPaths) -> Path:
    """Present while the live bootstrap was made live before Envoy validated it."""
    return paths.bootstrap.with_name("bootstrap.unchecked")


async def install_first_bootstrap(
    config: SidecarConfig, document: dict[str, Any], paths: EnvoyPaths, *,
    runner: Runner, user: ProxyIdentity | None, chown: Chown = os_chown,
) -> asyncio.Task[None] | None:
    """With no live bootstrap yet, make ``document`` live now and return the running
    check of it: a task that raises ConfigRejected (and removes the file) if Envoy
    refuses it. None when a live file exists: then ``install_bootstrap``."""
    live = paths.bootstrap
    if live.exists():
        return None
    # Marked unchecked first: an agent killed before the check ends validates it
    # next time.
    unchecked = _unchecked(paths)
    write_atomic(unchecked, b"", mode=0o600)
    candidate = _stage(paths, to_yaml(document).encode(), user, chown)
    os.replace(candidate, live)
    fsync_dir(live.parent)

    async def check() -> None:
        ok, output = await validate_bootstrap(config, live, runner=runner, user=user)
        if not ok:  # the file before the marker: a crash between never leaves it trusted
            live.unlink(missing_ok=True)
        unchecked.unlink(missing_ok=True)
        if not ok:
            raise ConfigRejected(live, live, output, first=True)

    return asyncio.create_task(check())


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
    unchecked = _unchecked(paths)
    with contextlib.suppress(FileNotFoundError):
        if live.read_bytes() == data and not unchecked.exists():
            return False
    candidate = _stage(paths, data, user, chown)
    try:
        ok, output = await validate_bootstrap(config, candidate, runner=runner, user=user)
        if not ok:
            raise ConfigRejected(candidate, live, output)
        os.replace(candidate, live)
        fsync_dir(live.parent)
        unchecked.unlink(missing_ok=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
    return True
