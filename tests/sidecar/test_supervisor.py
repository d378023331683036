"""Supervisor behaviour with real processes behind the injected runner (crash
loops, a missing binary, drain order) on a virtual clock (backoff is asserted,
never waited for); plus a real Envoy accepting the drain call in its own
namespace."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.proxy.user import ProxyIdentity
from agent.sidecar.admin import AdminProbe
from agent.sidecar.config import RestartPolicy, SidecarConfig
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.supervisor import (
    EnvoyState,
    EnvoySupervisor,
    SidecarNotReady,
    SidecarStatus,
)
from tests.fakes.clock import FakeClock

CONFIG = SidecarConfig(enabled=True, envoy_path=Path("/usr/local/bin/envoy"), drain_time=0.2,
                       restart=RestartPolicy(0.5, 4.0, 3, 60.0))


class ScriptRunner:
    """Runs ``sh -c script`` in place of Envoy: a real child, real pipes, real exit codes.
    With ``clock``, each run takes ``lasts`` seconds of virtual time."""

    def __init__(self, script: str, clock: FakeClock | None = None, lasts: float = 0.0) -> None:
        self.script = script
        self.starts: list[list[str]] = []
        self.clock = clock
        self.lasts = lasts

    async def start(self, argv: Sequence[str], *,
                    user: ProxyIdentity | None) -> asyncio.subprocess.Process:
        self.starts.append(list(argv))
        if self.clock is not None:
            self.clock.advance(self.lasts)
        return await asyncio.create_subprocess_exec(
            "sh", "-c", self.script, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)


class FakeProbe:
    def __init__(self, ready: bool) -> None:
        self.is_ready = ready
        self.drains = 0

    async def ready(self) -> bool:
        return self.is_ready

    async def drain(self) -> bool:
        self.drains += 1
        return True


class SilentProbe(FakeProbe):
    """An admin port that never answers: the ready watcher waits on it instead of
    polling, so only the supervisor's backoff moves the virtual clock."""

    def __init__(self) -> None:
        super().__init__(ready=False)

    async def ready(self) -> bool:
        await asyncio.Event().wait()
        return False


async def _until(predicate: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_repeated_crashes_back_off_and_become_a_visible_crashloop(
        caplog: pytest.LogCaptureFixture) -> None:
    runner = ScriptRunner('echo "[t][1][critical][main] bad listener" >&2; exit 3')
    clock = FakeClock()
    seen: list[SidecarStatus] = []

    async def scenario() -> SidecarStatus:
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner,
                              probe=SilentProbe(), clock=clock, on_status=seen.append)
        task = asyncio.create_task(sup.run())
        await _until(lambda: sup.status().consecutive_failures >= 5)
        status = sup.status()
        with pytest.raises(SidecarNotReady, match="crashloop"):
            await sup.wait_ready(0.05)
        await sup.shutdown()
        await asyncio.wait_for(task, 5)
        assert sup.status().state is EnvoyState.STOPPED
        return status

    with caplog.at_level(logging.INFO, logger="agent.sidecar"):
        status = asyncio.run(scenario())
    assert status.state is EnvoyState.CRASHLOOP and not status.ready
    assert status.last_exit == "exit status 3"
    assert "bad listener" in status.detail
    assert clock.sleeps[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]  # doubling, capped at max_backoff
    assert {s.state for s in seen} >= {EnvoyState.STARTING, EnvoyState.BACKOFF,
                                      EnvoyState.CRASHLOOP}
    assert status.as_dict()["state"] == "crashloop"
    assert "bad listener" in caplog.text  # Envoy's stderr reached the agent's log


def test_stable_run_resets_the_failure_count() -> None:
    clock = FakeClock()
    runner = ScriptRunner("exit 1", clock, lasts=40.0)  # stable_after is 60 s

    async def scenario() -> SidecarStatus:
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner,
                              probe=SilentProbe(), clock=clock)
        task = asyncio.create_task(sup.run())
        await _until(lambda: sup.status().restarts >= 3)
        await sup.shutdown()
        await task
        return sup.status()

    # each run is under stable_after, so every crash counts
    status = asyncio.run(scenario())
    assert status.consecutive_failures == status.restarts >= 3

    async def stable() -> int:
        slow = FakeClock()
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None,
                              runner=ScriptRunner("exit 1", slow, lasts=100.0),
                              probe=SilentProbe(), clock=slow)
        task = asyncio.create_task(sup.run())
        await _until(lambda: sup.status().restarts >= 3)
        await sup.shutdown()
        await task
        return sup.status().consecutive_failures

    assert asyncio.run(stable()) == 1


def test_missing_envoy_binary_is_a_clear_error_not_a_hang() -> None:
    config = SidecarConfig(enabled=True, envoy_path=Path("/nonexistent/bin/envoy"),
                           restart=RestartPolicy(0.01, 0.01, 2, 60.0))

    async def scenario() -> SidecarStatus:
        sup = EnvoySupervisor(config, Path("/b.yaml"), user=None, runner=SubprocessRunner(),
                              probe=FakeProbe(False), clock=FakeClock())
        task = asyncio.create_task(sup.run())
        await _until(lambda: sup.status().state is EnvoyState.CRASHLOOP)
        with pytest.raises(SidecarNotReady, match="/nonexistent/bin/envoy"):
            await sup.wait_ready(0.05)
        status = sup.status()
        await sup.shutdown()
        await task
        return status

    status = asyncio.run(scenario())
    assert "envoy binary not found or not executable: /nonexistent/bin/envoy" in status.detail
    assert status.pid is None


def test_shutdown_drains_then_terminates_and_a_cancelled_run_never_orphans() -> None:
    probe = FakeProbe(ready=True)
    states: list[EnvoyState] = []

    async def scenario() -> tuple[int, int | None]:
        runner = ScriptRunner("exec sleep 60")
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner, probe=probe,
                              on_status=lambda s: states.append(s.state))
        task = asyncio.create_task(sup.run())
        await sup.wait_ready(5)
        assert sup.ready
        pid = sup.status().pid
        assert pid is not None
        await sup.shutdown()
        await asyncio.wait_for(task, 5)
        assert len(runner.starts) == 1  # no restart after a requested stop

        sup2 = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner, probe=probe)
        task2 = asyncio.create_task(sup2.run())
        await sup2.wait_ready(5)
        pid2 = sup2.status().pid
        task2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task2
        return pid, pid2

    pid, pid2 = asyncio.run(scenario())
    assert probe.drains == 1
    assert states.index(EnvoyState.DRAINING) < states.index(EnvoyState.STOPPED)
    for p in (pid, pid2):
        assert not Path(f"/proc/{p}").exists() or "zombie" in Path(
            f"/proc/{p}/status").read_text()


class GatedRunner(ScriptRunner):
    """The first start waits on ``gate``: a spawn still in progress (an Envoy started
    early, before the agent re-rendered the bootstrap). Records every child."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.gate = asyncio.Event()
        self.waiting = False
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, argv: Sequence[str], *,
                    user: ProxyIdentity | None) -> asyncio.subprocess.Process:
        if not self.procs:
            self.waiting = True
            await self.gate.wait()
        proc = await super().start(argv, user=user)
        self.procs.append(proc)
        return proc


def test_restart_during_spawn_replaces_that_process_and_counts_no_failure() -> None:
    async def scenario() -> tuple[GatedRunner, SidecarStatus, list[int | None]]:
        runner = GatedRunner("exec sleep 60")
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner,
                              probe=FakeProbe(ready=True))
        task = asyncio.create_task(sup.run())
        await _until(lambda: runner.waiting)
        await sup.restart()  # the bootstrap changed while this Envoy was being spawned
        runner.gate.set()
        await _until(lambda: len(runner.procs) == 2)
        await sup.wait_ready(5)
        status = sup.status()
        await sup.shutdown()
        await asyncio.wait_for(task, 5)
        return runner, status, [p.returncode for p in runner.procs]

    runner, status, codes = asyncio.run(scenario())
    assert status.pid == runner.procs[1].pid  # ready is the replacement's
    assert codes[0] is not None and codes[0] < 0  # the first was terminated, not left running
    assert status.restarts == 0 and status.consecutive_failures == 0


def test_a_waiter_during_a_restart_sees_the_new_process_ready_not_the_old() -> None:
    """The old Envoy keeps answering /ready while it exits (here for 1.5 s after
    SIGTERM, longer than the 1 s live poll): whoever waits for readiness once the
    restart began must get the replacement's, never the exiting one's."""
    async def scenario() -> tuple[int | None, int | None, int]:
        runner = ScriptRunner("trap 'sleep 1.5; kill $!; exit 0' TERM; sleep 60 & wait")
        sup = EnvoySupervisor(CONFIG, Path("/b.yaml"), user=None, runner=runner,
                              probe=FakeProbe(ready=True))
        task = asyncio.create_task(sup.run())
        await sup.wait_ready(5)
        old = sup.status().pid
        restarting = asyncio.create_task(sup.restart())
        await asyncio.sleep(0)  # SIGTERM sent; the old process answers for 1.5 s more
        await sup.wait_ready(5)
        new = sup.status().pid
        await restarting
        await sup.shutdown()
        await asyncio.wait_for(task, 5)
        return old, new, len(runner.starts)

    old, new, starts = asyncio.run(scenario())
    assert starts == 2
    assert new is not None and new != old


def test_real_envoy_accepts_graceful_drain(hosts: object, envoy_path: Path,
                                           tmp_path: Path) -> None:
    """The admin calls the supervisor relies on, against a real Envoy (admin only config)."""
    from tests.sidecar.netns import NetnsLoop

    bootstrap = tmp_path / "b.yaml"
    bootstrap.write_text("admin: {address: {socket_address: {address: 127.0.0.1, "
                         "port_value: 15000}}}\n")
    config = SidecarConfig(enabled=True, envoy_path=envoy_path, drain_time=0.3)
    loop = NetnsLoop(hosts.vm.name)  # type: ignore[attr-defined]
    try:
        async def scenario() -> tuple[bool, EnvoyState]:
            probe = AdminProbe(15000)
            sup = EnvoySupervisor(config, bootstrap, user=None, probe=probe)
            task = asyncio.create_task(sup.run())
            await sup.wait_ready(20)
            drained = await probe.drain()
            await sup.shutdown()
            await task
            return drained, sup.status().state
        drained, state = loop.run(scenario())
    finally:
        loop.close()
    assert drained and state is EnvoyState.STOPPED


def test_a_slow_ready_answer_is_not_an_outage_but_a_hung_envoy_is(
        hosts: object, envoy_path: Path, tmp_path: Path) -> None:
    """A real Envoy, frozen with SIGSTOP: frozen past one /ready timeout it stays
    ready (a busy VM); frozen for good it turns not ready, and ready again when thawed."""
    import os
    import signal
    import time

    from agent.sidecar.supervisor import LIVE_FAILURES, LIVE_POLL
    from tests.sidecar.netns import NetnsLoop

    bootstrap = tmp_path / "b.yaml"
    bootstrap.write_text("admin: {address: {socket_address: {address: 127.0.0.1, "
                         "port_value: 15000}}}\n")
    config = SidecarConfig(enabled=True, envoy_path=envoy_path, drain_time=0.3)
    loop = NetnsLoop(hosts.vm.name)  # type: ignore[attr-defined]

    async def frozen(sup: EnvoySupervisor, seconds: float) -> list[bool]:
        """``sup.ready`` sampled every 50 ms while Envoy is stopped, and 1 s after."""
        pid = sup.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        seen, until = [], time.monotonic() + seconds
        try:
            while time.monotonic() < until:
                seen.append(sup.ready)
                await asyncio.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)
        return seen

    try:
        async def scenario() -> tuple[list[bool], list[bool], list[str]]:
            states: list[str] = []
            sup = EnvoySupervisor(config, bootstrap, user=None, probe=AdminProbe(15000),
                                  on_status=lambda s: states.append(s.detail))
            task = asyncio.create_task(sup.run())
            await sup.wait_ready(30)
            await asyncio.sleep(LIVE_POLL)  # now in the live (1 s) polling
            # One poll times out (1 s), the next one finds Envoy thawed.
            brief = await frozen(sup, 1.5)
            # Frozen for good: LIVE_FAILURES timeouts plus the polls between them.
            hung = await frozen(sup, LIVE_FAILURES * (LIVE_POLL + 1.0) + 3.0)
            await sup.wait_ready(15)
            await sup.shutdown()
            await task
            return brief, hung, states
        brief, hung, states = loop.run(scenario())
    finally:
        loop.close()
    assert all(brief), "one slow /ready answer made Envoy not ready"
    assert not hung[-1], "a hung Envoy still counts as ready"
    assert any("stopped answering 200" in d for d in states), states
