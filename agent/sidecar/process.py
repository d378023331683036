"""Starting Envoy: its command line, the proxy user, and the runner seam.

The runner is the one place a process is created, so tests can start the real
Envoy inside a network namespace (or count spawns) without patching globals.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from agent.sidecar.config import SidecarConfig
from agent.sidecar.sds import ProxyIdentity


class SidecarError(Exception):
    """Base of the sidecar's errors; ``str()`` is operator-facing."""


class EnvoyNotFound(SidecarError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"envoy binary not found or not executable: {path} "
                         "(set sidecar.envoy_path)")
        self.path = path


class ProxyUserMissing(SidecarError):
    pass


def resolve_proxy(
    config: SidecarConfig, *, getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam
) -> ProxyIdentity:
    """Numeric ``proxy_uid``/``proxy_gid`` win; otherwise look ``proxy_user`` up."""
    if config.proxy_uid is not None and config.proxy_gid is not None:
        return ProxyIdentity(config.proxy_uid, config.proxy_gid)
    try:
        entry = getpwnam(config.proxy_user)
    except KeyError:
        raise ProxyUserMissing(
            f"proxy user {config.proxy_user!r} does not exist (create it, or set "
            "sidecar.proxy_uid and sidecar.proxy_gid)") from None
    return ProxyIdentity(entry.pw_uid, entry.pw_gid)


def envoy_argv(config: SidecarConfig, bootstrap: Path, *, validate: bool = False) -> list[str]:
    argv = [str(config.envoy_path), "-c", str(bootstrap),
            # One Envoy per VM and no hot restart: the shared-memory region it
            # would create is a cross-user leftover risk and we restart instead.
            "--disable-hot-restart",
            "--log-level", config.envoy_log_level]
    if validate:
        return [*argv, "--mode", "validate"]
    return [*argv,
            "--concurrency", str(config.concurrency),
            "--drain-time-s", str(max(1, round(config.drain_time))),
            "--drain-strategy", "gradual"]


class Runner(Protocol):
    """Starts a process as ``user`` with stdout/stderr piped."""

    async def start(
        self, argv: Sequence[str], *, user: ProxyIdentity | None
    ) -> asyncio.subprocess.Process: ...


class SubprocessRunner:
    """The real runner: ``fork``/``exec`` with the uid/gid dropped in the child.

    Dropping from root to a non-root uid clears every capability (no
    ``PR_SET_KEEPCAPS``), supplementary groups are emptied, and the child gets
    its own session so a terminal's signals reach only the agent.
    """

    async def start(
        self, argv: Sequence[str], *, user: ProxyIdentity | None
    ) -> asyncio.subprocess.Process:
        drop = user is not None and user.uid != os.geteuid()
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                # Envoy needs nothing from the agent's environment; keep it out.
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
                user=user.uid if drop and user else None,
                group=user.gid if drop and user else None,
                extra_groups=[] if drop else None,
            )
        except FileNotFoundError as exc:
            raise EnvoyNotFound(Path(argv[0])) from exc
        except PermissionError as exc:
            if not os.access(argv[0], os.X_OK):
                raise EnvoyNotFound(Path(argv[0])) from exc
            raise SidecarError(
                f"cannot start envoy as uid {user.uid if user else os.geteuid()}: {exc.strerror} "
                "(the agent needs CAP_SETUID and CAP_SETGID to drop to the proxy user)") from exc
