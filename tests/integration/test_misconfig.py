"""Bad config, an unreadable trust anchor or the wrong registrar CA: exit 78 (or
a clear refusal) and nothing on disk is damaged."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.fixtures.certs import TestCA


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def bootstrapped(registrar_factory: Any, agent_factory: Any) -> Any:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    assert agent.stop() == 0
    return reg, agent


def test_bad_config_exits_78_and_keeps_credentials(registrar_factory: Any,
                                                   agent_factory: Any) -> None:
    _, agent = bootstrapped(registrar_factory, agent_factory)
    before = snapshot(agent.state_dir)
    agent.config["rotation"]["renew_at"] = 7
    agent.write_config()
    agent.start()
    assert agent.wait_exit(30) == 78
    assert "rotation.renew_at" in agent.log_text() and str(agent.config_path) in agent.log_text()
    assert snapshot(agent.state_dir) == before


def test_unreadable_trust_anchor_is_a_config_error(registrar_factory: Any,
                                                   agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.config["registrar"]["ca_file"] = str(agent.base_dir / "missing-ca.pem")
    agent.write_config()
    agent.start()
    assert agent.wait_exit(30) == 78
    assert "missing-ca.pem" in agent.log_text()
    assert agent.token_file.exists()
    assert not (agent.credentials / "current").exists()


def test_wrong_registrar_ca_is_refused_and_the_token_kept(registrar_factory: Any,
                                                          agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    token = reg.create_token("web", ttl="10m")
    agent = agent_factory(reg, token=token)
    wrong = agent.base_dir / "other-ca.pem"
    wrong.write_bytes(TestCA().bundle_pem)
    agent.config["registrar"]["ca_file"] = str(wrong)
    agent.write_config()
    agent.start()
    assert agent.wait_exit(30) == 78
    log = agent.log_text()
    assert "pinned trust anchor" in log and "other-ca.pem" in log
    assert agent.token_file.read_text().strip() == token
    assert not (agent.credentials / "current").exists()
    assert "attest ok" not in reg.log_text()


def test_sighup_with_a_bad_config_keeps_running(registrar_factory: Any,
                                                agent_factory: Any) -> None:
    import signal
    import time

    _, agent = bootstrapped(registrar_factory, agent_factory)
    agent.start()
    agent.wait_ready()
    agent.config["rotation"]["jitter"] = 9
    agent.write_config()
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert agent.proc.poll() is None and agent.ready()
    assert "reload rejected" in agent.log_text()
    agent.config["rotation"]["jitter"] = 0.05
    agent.write_config()
    agent.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert "configuration reloaded" in agent.log_text()
    assert agent.stop() == 0


def test_capture_without_a_proxy_exits_78_before_spending_the_token(
        registrar_factory: Any, agent_factory: Any) -> None:
    """Capture alone would send every outbound connection, renewals included, to a
    port nobody serves: refused at start, naming the file and the key."""
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.config["capture"] = {"enabled": True}
    agent.write_config()
    agent.start()
    assert agent.wait_exit(30) == 78
    log = agent.log_text()
    assert f"{agent.config_path}: capture.enabled: is true but sidecar.enabled is false" in log
    assert "capture.external_proxy: true" in log
    assert agent.token_file.exists()
    assert not (agent.credentials / "current").exists()
