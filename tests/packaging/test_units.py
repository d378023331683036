"""The shipped systemd units: hardening score and the directives issue 6 requires.

Fast set: needs only the host's systemd-analyze (systemd >= 252)."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
MAX_EXPOSURE = 2.5


def _exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, f"no score from systemd-analyze:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def _service(unit: Path) -> dict[str, list[str]]:
    """[Service] keys -> every value (units repeat keys, e.g. SystemCallFilter)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}{key}", []).append(value)
    return values


@pytest.mark.parametrize("name", ["mesh-agent.service", "mesh-registrar.service"])
def test_exposure_is_at_most_2_5(name: str) -> None:
    score = _exposure(UNITS / name)
    assert score <= MAX_EXPOSURE, f"{name}: systemd-analyze security exposure {score}"


def test_agent_unit_has_the_contract_directives() -> None:
    v = _service(UNITS / "mesh-agent.service")
    s = "[Service]"
    assert v[f"{s}Type"] == ["notify"]
    assert v[f"{s}Restart"] == ["on-failure"]
    assert v[f"{s}KillMode"] == ["mixed"], "Envoy must be stopped by the agent, after capture"
    assert "78" in v[f"{s}RestartPreventExitStatus"][0].split()
    assert v[f"{s}WatchdogSec"]
    assert v[f"{s}User"] == ["mesh-agent"]
    assert set(v[f"{s}AmbientCapabilities"][0].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"}
    assert v[f"{s}CapabilityBoundingSet"] == v[f"{s}AmbientCapabilities"]
    assert v[f"{s}MemoryDenyWriteExecute"] == ["yes"]
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert v[f"{s}{key}"] == ["mesh-agent"]
    assert any("capture remove" in cmd for cmd in v[f"{s}ExecStopPost"])
    # no "-" prefix: a failed capture removal must show as a failed stop
    assert not any(cmd.startswith("-") for cmd in v[f"{s}ExecStopPost"])
    after = " ".join(v["[Unit]After"]).split()
    assert {"network-online.target", "time-sync.target"} <= set(after)
    assert "network-online.target" in " ".join(v["[Unit]Wants"])


def test_registrar_unit_runs_without_capabilities() -> None:
    v = _service(UNITS / "mesh-registrar.service")
    assert v["[Service]User"] == ["mesh-registrar"]
    assert v["[Service]CapabilityBoundingSet"] == [""]
    assert v["[Service]RestartPreventExitStatus"] == ["78"]
    # Well above the default connection caps' needs (tests/registrar/test_connections.py
    # shows what 1,024 files allow).
    assert int(v["[Service]LimitNOFILE"][0]) >= 65536


def test_units_parse_as_ini() -> None:
    # systemd syntax is a superset; a ConfigParser failure means a typo'd section.
    for unit in UNITS.glob("*.service"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        assert {"Unit", "Service", "Install"} <= set(parser.sections()), unit
