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


def _sighup(agent: Any) -> str:
    """Send SIGHUP and return the agent's one ``sighup:`` answer to it."""
    import signal
    import time

    seen = agent.log_text().count("sighup:")
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while agent.log_text().count("sighup:") == seen:
        assert time.monotonic() < deadline, agent.log_text()[-2000:]
        assert agent.proc.poll() is None, agent.log_text()[-2000:]
        time.sleep(0.05)
    line = [ln for ln in agent.log_text().splitlines() if "sighup:" in ln][-1]
    return line.split("sighup:", 1)[1]


def test_sighup_with_a_bad_config_keeps_running(registrar_factory: Any,
                                                agent_factory: Any) -> None:
    _, agent = bootstrapped(registrar_factory, agent_factory)
    agent.start()
    agent.wait_ready()
    agent.config["rotation"]["jitter"] = 9
    agent.write_config()
    answer = _sighup(agent)
    assert answer.startswith(" rejected the new configuration"), answer
    assert "rotation.jitter" in answer
    assert agent.proc.poll() is None and agent.ready()
    agent.config["rotation"]["jitter"] = 0.05
    agent.write_config()
    assert _sighup(agent).startswith(" applied rotation"), agent.log_text()[-2000:]
    assert agent.stop() == 0


def test_sighup_applies_or_rejects_each_changed_section(registrar_factory: Any,
                                                        agent_factory: Any) -> None:
    """Every changed section is named: applied at once, or rejected until a restart
    (and then it keeps its running value, so the next SIGHUP names it again)."""
    _, agent = bootstrapped(registrar_factory, agent_factory)
    agent.start()
    agent.wait_ready()
    assert _sighup(agent).startswith(" no change")
    agent.config["log_level"] = "info"
    agent.config["rotation"]["jitter"] = 0.05
    agent.config["attestation"]["token_file"] = str(agent.base_dir / "other-token")
    agent.config["status"]["listen"] = "127.0.0.1:1"
    agent.write_config()
    answer = _sighup(agent)
    assert answer.startswith(" applied rotation, log_level; "
                             "rejected attestation, status: need a restart"), answer
    assert "applied=rotation,log_level rejected=attestation,status" in answer
    assert agent.ready(), "the rejected status section must keep the running endpoint"
    # The applied sections are now the running ones; the rejected ones are not.
    assert _sighup(agent).startswith(" rejected attestation, status: need a restart")
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
