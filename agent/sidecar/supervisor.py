"""Runs Envoy for the agent's lifetime: start as the proxy user, watch ``/ready``,
restart crashes with capped exponential backoff, drain and stop on shutdown.

One task (``run()``) in the agent's TaskGroup. The status command reads
``status()``; ``READY=1`` waits on ``wait_ready()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from agent.proxy.user import ProxyIdentity
from agent.sidecar.admin import AdminProbe
from agent.sidecar.config import SidecarConfig
from agent.sidecar.process import Runner, SidecarError, SubprocessRunner, envoy_argv
from meshcore.clock import Clock, SystemClock, sleep_unless

LOG = logging.getLogger("agent.sidecar")
STOP_GRACE = 5.0  # after SIGTERM, before SIGKILL
# Until the first 200: start-up waits on this poll (a local HTTP GET, ~1 ms).
READY_POLL = 0.01
LIVE_POLL = 1.0
# A ready Envoy counts as not ready only after this many failed /ready polls
# in a row: one answer slower than the probe timeout (a busy or CPU-starved
# VM, Envoy rebuilding TLS contexts after a rotation) is not an outage, and
# flapping would turn the agent's own readiness and its health reports false
# for nothing. A hung Envoy is still seen within ~LIVE_FAILURES x (poll + timeout).
LIVE_FAILURES = 3
_LEVELS = {"[critical]": logging.CRITICAL, "[error]": logging.ERROR,
           "[warning]": logging.WARNING, "[debug]": logging.DEBUG, "[trace]": logging.DEBUG}


class EnvoyState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"        # crashed, restarting soon
    CRASHLOOP = "crashloop"    # failure_threshold consecutive crashes; still retrying
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SidecarStatus:
    state: EnvoyState
    ready: bool
    pid: int | None
    restarts: int
    consecutive_failures: int
    last_exit: str | None
    detail: str

    def as_dict(self) -> dict[str, object]:
        """For ``mesh-agent status`` (JSON)."""
        return {"state": self.state.value, "ready": self.ready, "pid": self.pid,
                "restarts": self.restarts, "consecutive_failures": self.consecutive_failures,
                "last_exit": self.last_exit, "detail": self.detail}


class Probe(Protocol):
    async def ready(self) -> bool: ...
    async def drain(self) -> bool: ...


class SidecarNotReady(SidecarError):
    pass


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class EnvoySupervisor:
    """Cheap to construct; ``run()`` does the work."""

    def __init__(
        self, config: SidecarConfig, bootstrap: Path, *, user: ProxyIdentity | None,
        runner: Runner | None = None, probe: Probe | None = None,
        clock: Clock | None = None,
        logger: logging.Logger = LOG,
        on_status: Callable[[SidecarStatus], None] | None = None,
    ) -> None:
        self._config = config
        self._argv = envoy_argv(config, bootstrap)
        self._user = user
        self._runner: Runner = runner or SubprocessRunner()
        self._probe: Probe = probe or AdminProbe(config.admin_port)
        # Backoff, polls and "stable for stable_after" are schedules: on the
        # clock. Deadlines on the real process (drain, SIGTERM grace, /ready
        # timeout) stay on the event loop's clock: see meshcore.clock.
        self._clock = clock or SystemClock()
        self._log = logger
        self._access_log = logger.getChild("access")
        self._envoy_log = logger.getChild("envoy")
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._spawned = asyncio.Event()  # a first start was attempted (done or failed)
        self._wake = asyncio.Event()
        self._stopping = False
        self._restart_requested = False
        # A restart asked for while a process is being spawned: that process may
        # have read the old bootstrap, so it is replaced as soon as it exists.
        self._spawning = False
        self._restart_on_spawn = False
        self._state = EnvoyState.STOPPED
        self._restarts = 0
        self._failures = 0
        self._last_exit: str | None = None
        self._detail = ""
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._on_status = on_status

    # -- what the agent reads -------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._state is EnvoyState.READY

    def status(self) -> SidecarStatus:
        return SidecarStatus(
            state=self._state, ready=self.ready, pid=self._proc.pid if self._proc else None,
            restarts=self._restarts, consecutive_failures=self._failures,
            last_exit=self._last_exit, detail=self._detail)

    async def spawned(self) -> None:
        """Until ``run()`` has made its first attempt to start Envoy (the process
        exists, or its start failed and was logged)."""
        await self._spawned.wait()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until Envoy's ``/ready`` says 200; SidecarNotReady after ``timeout``
        (default: ``sidecar.ready_timeout``)."""
        limit = self._config.ready_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self._ready.wait(), limit)
        except TimeoutError:
            raise SidecarNotReady(
                f"envoy not ready after {limit:g}s (state {self._state.value}"
                + (f": {self._detail}" if self._detail else "") + ")") from None

    # -- control --------------------------------------------------------------
    async def restart(self) -> None:
        """Stop the running Envoy so ``run()`` starts it again with the current
        bootstrap file, without counting a failure or backing off. With no process
        it does nothing, except while one is being spawned (Envoy started early,
        before the bootstrap was re-rendered): that one is replaced once it exists."""
        # Not ready from now on: whoever waits for readiness after this call must
        # see the restarted Envoy's, never the old one's.
        self._ready.clear()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            self._restart_on_spawn = self._spawning
            return
        self._restart_requested = True
        await self._terminate(proc)

    async def shutdown(self) -> None:
        """Drain (``sidecar.drain_time``), then stop Envoy; ``run()`` returns."""
        self._stopping = True
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._set_state(EnvoyState.DRAINING, "draining before stop")
            self._ready.clear()
            if self._config.drain_time > 0 and await self._probe.drain():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), self._config.drain_time)
            await self._terminate(proc)

    async def run(self) -> None:
        """Supervise until ``shutdown()``; a cancelled run kills Envoy, never orphans it."""
        try:
            while not self._stopping:
                started = self._clock.monotonic()
                returncode = await self._run_once()
                if self._stopping:
                    break
                if self._restart_requested:
                    self._restart_requested = False
                    continue
                if self._clock.monotonic() - started >= self._config.restart.stable_after:
                    self._failures = 0
                self._failures += 1
                self._restarts += 1
                self._last_exit = describe_exit(returncode) if returncode is not None else None
                await self._backoff()
        finally:
            proc = self._proc
            if proc is not None and proc.returncode is None:
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
            self._ready.clear()
            self._set_state(EnvoyState.STOPPED, self._detail)

    # -- inside ---------------------------------------------------------------
    def _set_state(self, state: EnvoyState, detail: str) -> None:
        self._state = state
        self._detail = detail
        self._notify()

    def _notify(self) -> None:
        if self._on_status is not None:
            self._on_status(self.status())

    async def _run_once(self) -> int | None:
        # A crash loop stays visible while we keep retrying; only READY ends it.
        if self._state is not EnvoyState.CRASHLOOP:
            self._set_state(EnvoyState.STARTING, "")
        self._stderr_tail.clear()
        self._spawning = True
        try:
            proc = await self._runner.start(self._argv, user=self._user)
        except SidecarError as exc:
            self._detail = str(exc)
            self._log.error("cannot start envoy: %s", exc)
            return None
        finally:
            self._spawning = False
            self._spawned.set()
        self._proc = proc
        if self._restart_on_spawn:
            self._restart_on_spawn = False
            self._restart_requested = True
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # read the file it replaced; run() starts the new one
        self._log.info("envoy started (pid %d, uid %s)", proc.pid,
                       self._user.uid if self._user else "unchanged")
        pumps = [asyncio.create_task(self._pump(proc.stdout, self._access_log, access=True)),
                 asyncio.create_task(self._pump(proc.stderr, self._envoy_log, access=False))]
        watcher = asyncio.create_task(self._watch_ready(proc))
        try:
            returncode = await proc.wait()
        finally:
            watcher.cancel()
            self._ready.clear()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pumps, watcher), 2.0)
        self._proc = None
        if not self._stopping and not self._restart_requested:
            tail = " | ".join(self._stderr_tail)
            self._detail = f"envoy {describe_exit(returncode)}" + (f": {tail}" if tail else "")
            self._log.error("%s", self._detail)
        return returncode

    async def _watch_ready(self, proc: asyncio.subprocess.Process) -> None:
        misses = 0  # failed /ready polls in a row
        while proc.returncode is None:
            ready = await self._probe.ready()
            misses = 0 if ready else misses + 1
            # A process being replaced (restart) never becomes ready again.
            if ready and not self._ready.is_set() and not self._stopping \
                    and not self._restart_requested:
                self._set_state(EnvoyState.READY, "")
                self._ready.set()
                self._log.info("envoy ready (pid %d)", proc.pid)
            elif misses >= LIVE_FAILURES and self._ready.is_set():
                self._ready.clear()
                detail = f"envoy /ready stopped answering 200 ({misses} polls in a row)"
                self._set_state(EnvoyState.STARTING, detail)
                self._log.warning("%s; not ready (pid %d)", detail, proc.pid)
            await self._clock.sleep(LIVE_POLL if self._ready.is_set() else READY_POLL)

    async def _pump(self, stream: asyncio.StreamReader | None, logger: logging.Logger,
                    *, access: bool) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            if access:
                logger.info("%s", text)
                continue
            level = next((lv for tag, lv in _LEVELS.items() if tag in text), logging.INFO)
            if level >= logging.WARNING:
                self._stderr_tail.append(text)
            logger.log(level, "%s", text)

    async def _backoff(self) -> None:
        policy = self._config.restart
        delay = min(policy.max_backoff, policy.min_backoff * 2 ** (self._failures - 1))
        state = (EnvoyState.CRASHLOOP if self._failures >= policy.failure_threshold
                 else EnvoyState.BACKOFF)
        self._set_state(state, self._detail)
        self._log.warning("envoy %s (%d consecutive failures); restarting in %.2fs",
                          state.value, self._failures, delay)
        await sleep_unless(self._clock.sleep(delay), self._wake)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
