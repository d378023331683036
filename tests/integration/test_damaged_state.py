"""Damaged credentials or state through the real daemon: each case is moved
into ``STATE/quarantine/<time>/`` with a log line saying what was wrong, never
a traceback or exit 1. With no evidence the agent exits 79 naming the file;
with a join token it attests again. A damaged ``state.json`` alone costs
nothing: the certificate is kept and renewed at once to learn the state again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.identity.keys import generate_key, key_pem
from tests.fixtures.agent import AgentProcess

Damage = Callable[[AgentProcess], str]  # plants the fault; returns the path the log names


def _gen(agent: AgentProcess) -> Path:
    return agent.credentials / os.readlink(agent.credentials / "current")


def truncated_cert(agent: AgentProcess) -> str:
    path = _gen(agent) / "cert-chain.pem"
    path.write_bytes(path.read_bytes()[:200])
    return str(_gen(agent))


def empty_key(agent: AgentProcess) -> str:
    (_gen(agent) / "key.pem").write_bytes(b"")
    return str(_gen(agent))


def mismatched_key(agent: AgentProcess) -> str:
    (_gen(agent) / "key.pem").write_bytes(key_pem(generate_key("ecdsa-p256")))
    return str(_gen(agent))


def garbage_bundle(agent: AgentProcess) -> str:
    (_gen(agent) / "bundle.pem").write_bytes(os.urandom(300))
    return str(_gen(agent))


def dangling_current(agent: AgentProcess) -> str:
    (agent.credentials / "current").unlink()
    (agent.credentials / "current").symlink_to("g00000099")
    return str(agent.credentials / "g00000099")


def regular_current(agent: AgentProcess) -> str:
    (agent.credentials / "current").unlink()
    (agent.credentials / "current").write_text("g00000001\n")
    return str(agent.credentials / "current")


def outside_current(agent: AgentProcess) -> str:
    outside = agent.base_dir / "elsewhere"
    outside.mkdir()
    for name in ("key.pem", "cert-chain.pem", "bundle.pem"):
        (outside / name).write_bytes((_gen(agent) / name).read_bytes())
    (agent.credentials / "current").unlink()
    (agent.credentials / "current").symlink_to(outside)
    return str(agent.credentials / "current")


def _state(agent: AgentProcess, body: bytes | Callable[[dict[str, Any]], Any]) -> str:
    path = agent.state_dir / "state.json"
    if callable(body):
        data = json.loads(path.read_text())
        path.write_text(json.dumps(body(data)))
    else:
        path.write_bytes(body)
    return str(path)


CRED_CASES: dict[str, Damage] = {
    "truncated-cert": truncated_cert, "empty-key": empty_key, "mismatched-key": mismatched_key,
    "garbage-bundle": garbage_bundle, "current-dangling": dangling_current,
    "current-regular-file": regular_current, "current-outside": outside_current,
}
STATE_CASES: dict[str, Damage] = {
    "state-garbage": lambda a: _state(a, b"{\"schema\": 2, \x00garbage"),
    "state-array": lambda a: _state(a, b"[1, 2, 3]"),
    "state-schema-99": lambda a: _state(a, lambda d: {**d, "schema": 99}),
    "state-renew-after-int": lambda a: _state(a, lambda d: {**d, "renew_after": 12345}),
    "state-rotations-str": lambda a: _state(a, lambda d: {**d, "rotations": "many"}),
    "state-mesh-list": lambda a: _state(a, lambda d: {**d, "mesh": ["x"]}),
    "state-not-utf8": lambda a: _state(a, b"{\"schema\": 2, \"spiffe_id\": \"\xff\"}"),
}


def _bootstrapped(registrar_factory: Any, agent_factory: Any) -> tuple[Any, AgentProcess]:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    assert agent.stop() == 0
    assert not agent.token_file.exists()
    return reg, agent


def _quarantined(agent: AgentProcess) -> list[Path]:
    root = agent.state_dir / "quarantine"
    return sorted(root.iterdir()) if root.is_dir() else []


def _no_crash(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert "damaged state quarantined" in log, log[-3000:]


@pytest.mark.parametrize("case", list(CRED_CASES), ids=list(CRED_CASES))
def test_damaged_credentials_are_quarantined_then_79_or_reattested(
        registrar_factory: Any, agent_factory: Any, case: str) -> None:
    reg, agent = _bootstrapped(registrar_factory, agent_factory)
    named = CRED_CASES[case](agent)

    # No evidence: exit 79 (systemd does not restart), the message names the file.
    agent.start()
    assert agent.wait_exit(30) == 79, agent.log_text()[-3000:]
    log = agent.log_text()
    _no_crash(log)
    assert named in log
    (where,) = _quarantined(agent)
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z", where.name)
    assert (where / "REASON").read_text().strip()
    assert os.stat(where).st_mode & 0o777 == 0o700
    assert not os.path.lexists(agent.credentials / "current")
    assert f"moved to {where}" in log

    # Evidence at hand: attest again and serve.
    agent.write_token(reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    assert agent.status()["ready"] is True
    assert len(_quarantined(agent)) == 1, "nothing new is damaged"
    assert agent.stop() == 0


@pytest.mark.parametrize("case", list(STATE_CASES), ids=list(STATE_CASES))
def test_damaged_state_json_is_quarantined_and_the_certificate_kept(
        registrar_factory: Any, agent_factory: Any, case: str) -> None:
    _, agent = _bootstrapped(registrar_factory, agent_factory)
    named = STATE_CASES[case](agent)
    # The stored certificate's serial, read before the start: the renewal can come
    # before the first status read once the agent is ready.
    stored = x509.load_pem_x509_certificates(
        (agent.credentials / "current" / "cert-chain.pem").read_bytes())[0]
    first = format(stored.serial_number, "x")
    agent.start()  # no token: only the stored certificate can make it ready
    agent.wait_ready()
    _no_crash(agent.log_text())
    assert named in agent.log_text()
    (where,) = _quarantined(agent)
    assert (where / "state.json").exists()
    # Renewed at once over mTLS, which writes a good state.json again.
    deadline = time.monotonic() + 20
    while "certificate renewed" not in agent.log_text():
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.1)
    state = json.loads((agent.state_dir / "state.json").read_text())
    assert state["schema"] == 2 and state["spiffe_id"].startswith("spiffe://")
    assert isinstance(state["rotations"], int) and isinstance(state["renew_after"], str)
    while agent.status()["serial"] == first:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert agent.stop() == 0
