"""`mesh-agent check`, `status` and `--version` as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def mesh_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_version() -> None:
    out = mesh_agent("--version")
    assert out.returncode == 0 and out.stdout.startswith("mesh-agent ")


def test_check_and_status_before_during_and_after(registrar_factory: Any,
                                                  agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    config = str(agent.config_path)

    check = mesh_agent("check", "--config", config)
    assert check.returncode == 0, check.stdout
    assert "ok    registrar:" in check.stdout and "join token present" in check.stdout

    agent.start()
    agent.wait_ready()
    live = mesh_agent("status", "--json", "--config", config)
    assert live.returncode == 0
    report = json.loads(live.stdout)
    assert report["running"] is True and report["ready"] is True
    assert report["spiffe_id"] == "spiffe://example.org/ns/prod/sa/web-vm"
    text = mesh_agent("status", "--config", config).stdout
    assert "identity:   spiffe://example.org/ns/prod/sa/web-vm" in text
    assert agent.stop() == 0

    stopped = mesh_agent("status", "--json", "--config", config)
    assert stopped.returncode == 3
    offline = json.loads(stopped.stdout)
    assert offline["running"] is False and offline["phase"] == "stopped"
    assert offline["serial"] == report["serial"]

    reg.stop()
    broken = mesh_agent("check", "--config", config)
    assert broken.returncode == 3
    assert "FAIL  registrar:" in broken.stdout
    assert "credentials are on disk" in broken.stdout


def test_check_reports_a_bad_config_with_78(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("registrar:\n  url: ftp://x\n")
    out = mesh_agent("check", "--config", str(path))
    assert out.returncode == 78
    assert "registrar.url" in out.stderr and str(path) in out.stderr
