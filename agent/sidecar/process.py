"""Starting Envoy: its command line, the drop to the proxy user, and the runner seam.

The runner is the one place a process is created, so tests can start the real
Envoy inside a network namespace (or count spawns) without patching globals.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from agent.proxy.user import ProxyIdentity
from agent.sidecar.config import SidecarConfig


class SidecarError(Exception):
    """Base of the sidecar's errors; ``str()`` is operator-facing."""


class EnvoyNotFound(SidecarError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"envoy binary not found or not executable: {path} "
                         "(set sidecar.envoy_path)")
        self.path = path


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
    """Starts a process as ``user`` with stdout/stderr piped. Read ``stdout`` and
    ``stderr`` directly: for a process run as another user, ``stdout`` is a pipe
    the runner made itself, which ``Process.communicate()`` does not know."""

    async def start(
        self, argv: Sequence[str], *, user: ProxyIdentity | None
    ) -> asyncio.subprocess.Process: ...


SETPRIV = "/usr/bin/setpriv"


def drop_argv(argv: Sequence[str], user: ProxyIdentity) -> list[str]:
    """``argv`` run as ``user`` with no capabilities at all.

    Under its unit the agent is not root: it holds CAP_NET_ADMIN, CAP_SETUID...
    as *ambient* capabilities, and a uid change between two non-root uids
    keeps those, so a plain setuid child would exec Envoy with the agent's
    capabilities. util-linux's ``setpriv`` changes uid/gid, empties the
    supplementary groups and clears the inheritable and ambient sets before
    it execs, so Envoy's permitted and effective sets are empty. It also sets
    the parent-death signal: an agent killed with SIGKILL takes its Envoy
    along instead of leaving it holding the proxy ports.
    """
    return [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--pdeathsig=TERM", "--", *argv]


class SubprocessRunner:
    """The real runner: the child drops to the proxy user with no capabilities
    (``drop_argv``) and gets its own session so a terminal's signals reach only
    the agent."""

    async def start(
        self, argv: Sequence[str], *, user: ProxyIdentity | None
    ) -> asyncio.subprocess.Process:
        drop = user is not None and user.uid != os.geteuid()
        if not os.access(argv[0], os.X_OK):
            raise EnvoyNotFound(Path(argv[0]))
        command = drop_argv(argv, user) if drop and user else list(argv)
        read_end, stdout = (-1, asyncio.subprocess.PIPE)
        if drop and user:
            # Config Envoy gets from a control plane may log to /dev/stdout (Istio's
            # accessLogFile), which Envoy opens by path: a pipe made by the agent is
            # root's, 0600, and the proxy user could not reopen it. So the pipe is
            # made here and handed to the proxy user before Envoy exists.
            read_end, stdout = os.pipe()
            os.fchown(read_end, user.uid, user.gid)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                # Envoy needs nothing from the agent's environment; keep it out.
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            )
        except FileNotFoundError as exc:
            _close(read_end, stdout)
            if command[0] == SETPRIV:
                raise SidecarError(f"{SETPRIV} (util-linux) is needed to start envoy as the "
                                   "proxy user") from exc
            raise EnvoyNotFound(Path(argv[0])) from exc
        except PermissionError as exc:
            _close(read_end, stdout)
            raise SidecarError(
                f"cannot start envoy as uid {user.uid if user else os.geteuid()}: {exc.strerror} "
                "(the agent needs CAP_SETUID and CAP_SETGID to drop to the proxy user)") from exc
        if read_end >= 0:
            os.close(stdout)
            proc.stdout = await _reader(read_end)
        return proc


def _close(read_end: int, write_end: int) -> None:
    if read_end >= 0:
        os.close(read_end)
        os.close(write_end)


async def _reader(fd: int) -> asyncio.StreamReader:
    """``fd`` as the StreamReader ``Process.stdout`` would have been."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(fd, "rb", buffering=0))
    return reader
