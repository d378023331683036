"""The bundle reaches an agent by polling, not only by renewal: with hour-long
certificates a `ca rotate prepare` is on the VM within seconds, stored durably
as a new generation, and the registrar learns the agent holds it. `activate`
waits for that, naming the agents that have not. After `activate` the
registrar's own certificate comes from the new CA and the agent, which pins
only the old root, keeps talking to it through the bundle it holds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.agent import AgentProcess
from tests.fixtures.registrar import RegistrarProcess, strict_context


def _roots(agent: AgentProcess) -> int:
    return (agent.credentials / "current" / "bundle.pem").read_text().count("BEGIN CERT")


def _wait(check: Callable[[], bool], timeout: float, what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{agent.log_text()[-3000:]}"
        time.sleep(0.2)


def _served_issuer(reg: RegistrarProcess, trusting: Path) -> str:
    """The issuer of the certificate the running registrar serves, verified strictly
    against ``trusting`` alone; raises ssl.SSLError when that does not verify it."""
    with socket.create_connection((reg.host, reg.port), timeout=10) as raw, \
            strict_context(trusting).wrap_socket(raw, server_hostname=reg.host) as tls:
        cert = tls.getpeercert()
    return dict(x[0] for x in cert["issuer"])["commonName"]


def _ca(reg: RegistrarProcess, *args: str) -> tuple[int, Any]:
    out = reg.cli("ca", *args, "--json", check=False)
    return out.returncode, json.loads(out.stdout) if out.stdout else out.stderr


def test_a_new_root_reaches_the_agent_by_polling_and_activate_waits_for_it(
        registrar_factory: Callable[..., RegistrarProcess],
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    reg = registrar_factory(groups={"default": ("default", "vm", 3600)})
    anchor = tmp_path / "registrar-ca.pem"
    shutil.copyfile(reg.ca_file, anchor)
    agent = agent_factory(reg, token=reg.create_token("default"), extra={
        "registrar": {"ca_file": str(anchor), "bundle_poll_interval": "1s"}})
    agent.start()
    agent.wait_ready(60)
    generation = os.readlink(agent.credentials / "current")

    # An agent that does not poll (stopped) holds activation back, by name.
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    try:
        code, prepared = _ca(reg, "rotate", "prepare")
        assert code == 0 and prepared["bundle_version"] == 2, prepared
        code, refused = _ca(reg, "rotate", "activate")
        assert code == 65 and refused["refused"] == "bundle_not_delivered", refused
        assert any("spiffe://example.org/ns/default/sa/vm" in w for w in refused["workloads"])
    finally:
        agent.proc.send_signal(signal.SIGCONT)

    _wait(lambda: _roots(agent) == 2, 15, "new root not polled", agent)
    assert os.readlink(agent.credentials / "current") != generation  # a new generation
    assert "new trust bundle from the registrar" in agent.log_text()
    assert agent.status()["rotations"] == 0  # by polling, not by a renewal
    _wait(lambda: not _ca(reg, "status")[1]["workloads_without_current_bundle"], 15,
          "registrar never learnt the agent holds the new bundle", agent)
    code, activated = _ca(reg, "rotate", "activate")
    assert code == 0 and activated["active"] == "v2", activated

    # The registrar now serves a certificate from the new CA (no restart); the agent
    # pins only the old root, yet its polls keep succeeding through its bundle.
    time.sleep(1.5)
    new_root = reg.state_dir / "ca" / "v2" / "root-cert.pem"
    assert _served_issuer(reg, new_root) == "example.org registrar intermediate v2"
    try:
        _served_issuer(reg, anchor)
        raise AssertionError("the old root alone still verifies the registrar")
    except ssl.SSLError:
        pass
    before = agent.log_text().count("trust bundle unchanged")
    _wait(lambda: agent.log_text().count("trust bundle unchanged") >= before + 3, 20,
          "polls stopped succeeding after activate", agent)
    assert "trust bundle poll failed" not in agent.log_text()
