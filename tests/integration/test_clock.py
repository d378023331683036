"""A wrong wall clock on the agent's host, driven by libfaketime (Debian
``faketime``) while the registrar keeps real time: renewals stay rate-bounded,
no identity is lost and status reports the clock skew with its offset.

The agent's monotonic clock is left real (FAKETIME_DONT_FAKE_MONOTONIC): only
the wall clock, which certificates and TLS are judged by, is wrong. A test that
steps the clock mid-run gives the offset in a file that libfaketime reads on
every call. A test whose offset stays put gives it in FAKETIME instead: when
libfaketime 0.9.10 cannot read that file for one call, it answers that call
with the real time, which no host does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import REPO, AgentProcess

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def _libfaketime() -> dict[str, str]:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} missing: install the Debian package faketime "
                    "(scripts/bootstrap does)")
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _faked(base: Path, offset: str) -> tuple[Path, dict[str, str]]:
    """An offset the test can step: written to ``control``, read on every call."""
    base.mkdir(parents=True, exist_ok=True)
    control = base / "faketime.rc"
    control.write_text(offset + "\n")
    return control, {**_libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(control),
                     "FAKETIME_NO_CACHE": "1"}


def _fixed(offset: str) -> dict[str, str]:
    """An offset that stays put for the process's life."""
    return {**_libfaketime(), "FAKETIME": offset}


def _cli(agent: AgentProcess, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args, "--config",
                           str(agent.config_path)], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _renewals(agent: AgentProcess) -> int:
    return agent.log_text().count("certificate renewed")


def _timed_out(exc: OSError) -> bool:
    """urllib raises a read timeout as is and wraps a connect timeout."""
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _wait_skew(agent: AgentProcess, near: float, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = agent.status()
        except OSError as exc:  # a stall of the loaded test machine: ask again
            if not _timed_out(exc):
                raise
            status = {}
        offset = status.get("clock_offset_seconds")
        if status.get("clock_skew") and offset is not None and abs(offset - near) < 5:
            return status
        assert time.monotonic() < deadline, (status, agent.log_text()[-3000:])
        time.sleep(0.2)


def _alive_and_ready_for(agent: AgentProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    stalls = 0
    while time.monotonic() < deadline:
        assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()[-3000:]
        try:
            code, body = agent.get("/ready")
        except OSError as exc:
            # No answer within the probe's 2 s is a stall of this loaded test
            # machine, not a refusal; three in a row (6 s) is a hung agent.
            # Anything else (a refused connection) fails at once.
            stalls += 1
            assert _timed_out(exc) and stalls < 3, \
                f"/ready unanswered ({stalls} in a row): {exc!r}\n{agent.log_text()[-3000:]}"
            continue
        stalls = 0
        assert code == 200, f"/ready answered {code} {body}\n{agent.log_text()[-3000:]}"
        time.sleep(0.25)


def test_clock_one_hour_ahead_mid_run_is_no_renewal_storm(
        registrar_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 60)})  # 70 s lifetime
    control, env = _faked(tmp_path / "agent", "+0")
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"), env=env)
    agent.start()
    agent.wait_ready()
    before = _renewals(agent)
    control.write_text("+3600\n")
    status = _wait_skew(agent, -3600)
    assert status["ready"] is True
    _alive_and_ready_for(agent, 20)
    # At most the normal schedule (one per half-life, 35 s) and never a storm.
    assert _renewals(agent) - before <= 2, agent.log_text()[-3000:]
    assert "clock skew" in agent.log_text()
    assert agent.stop() == 0


def test_clock_60s_behind_at_restart_keeps_the_identity(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    assert agent.stop() == 0
    assert not agent.token_file.exists(), "no evidence left: only the stored cert can help"
    env = _fixed("-60")
    agent.env.update(env)
    agent.start()
    agent.wait_ready()
    status = _wait_skew(agent, 60)
    assert status["ready"] is True
    log = agent.log_text()
    assert "stored certificate expired" not in log
    assert "not yet valid by this host's clock" in log
    _alive_and_ready_for(agent, 5)
    assert _renewals(agent) == 1, "renewed once at start-up, then on schedule"
    status = _cli(agent, env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"CLOCK SKEW: the registrar is \+(59|60|61)s", status.stdout), status.stdout
    check = _cli(agent, env, "check")
    assert check.returncode == 3, check.stdout + check.stderr
    assert re.search(r"clock skew: the registrar's clock is \+(59|60|61)s", check.stdout), \
        check.stdout
    metrics = agent.get("/metrics")[1]
    assert "mesh_agent_clock_skew 1.0" in metrics, metrics
    assert agent.stop() == 0


def test_clock_stepped_back_mid_run_is_reported_and_renewals_go_on(
        registrar_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 20)})  # 30 s lifetime
    control, env = _faked(tmp_path / "agent", "+0")
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"), env=env,
                          extra={"rotation": {"jitter": 0.0}})
    agent.start()
    agent.wait_ready()
    before, started = _renewals(agent), time.monotonic()
    control.write_text("-120\n")
    _wait_skew(agent, 120)
    _alive_and_ready_for(agent, 35)
    renewed = _renewals(agent) - before
    # The registrar hints a renewal 5 s after issue; the rate bound holds them
    # 7.5 s (a quarter of the 30 s lifetime) apart, on the monotonic clock.
    most = (time.monotonic() - started) / 7.5 + 1
    assert 2 <= renewed <= most, (renewed, most, agent.log_text()[-3000:])
    assert agent.stop() == 0


def test_clock_30s_behind_with_a_30s_ttl_renews_in_time(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 30)})  # 40 s lifetime
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"), env=_fixed("-30"),
                          extra={"rotation": {"jitter": 0.0}})
    started = time.monotonic()
    agent.start()
    agent.wait_ready()
    _wait_skew(agent, 30)
    _alive_and_ready_for(agent, 45)
    renewed = _renewals(agent)
    # Hinted 10 s after issue, held 10 s (a quarter of the 40 s lifetime) apart.
    most = (time.monotonic() - started) / 10 + 1
    assert 2 <= renewed <= most, (renewed, most, agent.log_text()[-3000:])
    log = agent.log_text()
    assert "expired while the registrar was unreachable" not in log
    assert "RemoteProtocolError" not in log
    assert agent.stop() == 0


def test_renewals_are_rate_bounded_when_the_schedule_is_always_due(
        registrar_factory: Any, agent_factory: Any) -> None:
    # renew_at 0.1 of a 70 s lifetime lands 7 s after NotBefore, which the registrar
    # backdates by 10 s: every new certificate is due at once, forever.
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 60)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          extra={"rotation": {"renew_at": 0.1, "jitter": 0.0}})
    agent.start()
    agent.wait_ready()
    _alive_and_ready_for(agent, 25)
    # First renewal at once, then >= 17.5 s (a quarter of the lifetime), then doubling.
    renewed = _renewals(agent)
    assert 1 <= renewed <= 3, (renewed, agent.log_text()[-3000:])
    assert "renewal held back by the rate bound" in agent.log_text()
    assert agent.stop() == 0


def test_registrar_cert_not_yet_valid_by_our_clock_is_retried_clock_skew(
        registrar_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 20)})  # 30 s lifetime
    control, env = _faked(tmp_path / "agent", "+0")
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"), env=env,
                          extra={"rotation": {"jitter": 0.0, "max_backoff": "1s"}})
    agent.start()
    agent.wait_ready()
    first = agent.status()["serial"]
    # Two hours back: the registrar's fresh server certificate is "not yet valid".
    control.write_text("-7200\n")
    deadline = time.monotonic() + 30
    while "clock_skew" not in agent.status()["failures"]:
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()[-3000:]
        time.sleep(0.2)
    status = agent.status()
    assert status["ready"] is True and status["serial"] == first
    assert "not yet valid by this host's clock" in status["last_error"]
    assert "registrar_untrusted" not in agent.log_text()
    control.write_text("+0\n")  # NTP fixes it: the next retry renews
    while agent.status()["serial"] == first:
        assert time.monotonic() < deadline + 10, agent.log_text()[-3000:]
        time.sleep(0.2)
    assert agent.stop() == 0
