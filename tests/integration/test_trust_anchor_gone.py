"""registrar.ca_file removed after start: nothing is sent, the log says the local
trust anchor is unreadable (not that the registrar refused), renewals are
retried, and at expiry the agent exits 78 telling the operator to fix the file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def _ready_then_anchor_removed(reg: Any, agent_factory: Any) -> tuple[Any, Path]:
    """An agent whose registrar.ca_file is its own copy, started, ready, and then
    that copy deleted; returns the agent and the path it was at."""
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    ca = agent.base_dir / "registrar-ca.pem"
    ca.write_bytes(reg.ca_file.read_bytes())
    agent.config["registrar"]["ca_file"] = str(ca)
    agent.write_config()
    agent.start()
    agent.wait_ready()
    ca.unlink()
    return agent, ca


def test_ca_file_removed_after_start_exits_78_at_expiry(registrar_factory: Any,
                                                       agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 4)})  # 14 s lifetime
    agent, ca = _ready_then_anchor_removed(reg, agent_factory)
    assert agent.wait_exit(40) == 78, agent.log_text()[-3000:]
    log = agent.log_text()
    assert "the local trust anchor is unreadable; nothing was sent to the registrar" in log
    assert "renewal refused" not in log
    assert "create a join token" not in log
    assert f"restore registrar.ca_file ({ca})" in log
    assert "Traceback" not in log


def test_ca_file_restored_before_expiry_renews(registrar_factory: Any,
                                               agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 10)})  # 20 s lifetime
    agent, ca = _ready_then_anchor_removed(reg, agent_factory)
    deadline = time.monotonic() + 20
    while "the local trust anchor is unreadable" not in agent.log_text():
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.1)
    assert agent.ready()
    ca.write_bytes(reg.ca_file.read_bytes())
    while "certificate renewed" not in agent.log_text():
        assert time.monotonic() < deadline + 10, agent.log_text()[-3000:]
        time.sleep(0.1)
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.stop() == 0
