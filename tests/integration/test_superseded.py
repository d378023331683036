"""A copy of the agent's key renews behind its back (a cloned VM): the agent's next
renewal is refused as ``certificate_superseded``. With evidence (a join token) it
attests again and carries on; without, it exits 79 at once with a clear message
instead of serving a forked identity until expiry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from agent.credentials import CredentialStore
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem

# 30 s TTL: NotBefore is backdated 10 s, so the agent renews ~10 s after issue (jitter 0):
# time enough to renew behind its back first.
TTL = 30


def renew_behind_its_back(reg: RegistrarProcess, chain: Path, key: Path, where: Path) -> None:
    """Renew with the agent's certificate, then use the result once: from then on the
    agent's certificate is superseded."""
    for step in ("copy-1", "copy-2"):
        new_key = ec_key()
        with httpx.Client(base_url=reg.url, verify=calls.tls(reg, chain, key),
                          timeout=10) as c:
            status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(new_key)})
        assert status == 200, body
        (where / step).mkdir(parents=True)
        chain, key = where / step / "cert-chain.pem", where / step / "key.pem"
        chain.write_text(body["cert_chain"])
        key.write_bytes(key_pem(new_key))


def start(reg: RegistrarProcess, agent_factory: Any) -> tuple[Any, Any]:
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          extra={"rotation": {"jitter": 0.0}})
    agent.start()
    agent.wait_ready()
    creds = CredentialStore(agent.credentials).current()
    assert creds is not None
    return agent, creds


def test_superseded_with_a_token_reattests(registrar_factory: Any, agent_factory: Any,
                                           tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", TTL)})
    second_token = reg.create_token("web", ttl="10m")
    agent, creds = start(reg, agent_factory)
    renew_behind_its_back(reg, creds.chain_path, creds.key_path, tmp_path / "clone")
    agent.write_token(second_token)
    deadline = time.monotonic() + 30
    while "certificate issued" not in agent.log_text().partition("re-attesting")[2]:
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        time.sleep(0.1)
    log = agent.log_text()
    assert "certificate_superseded" in log and "re-attesting" in log
    status = agent.status()
    assert status["ready"] is True and status["serial"] != creds.serial_hex
    assert not agent.token_file.exists()  # the new token was spent
    # The re-attested certificate renews normally.
    renewed = CredentialStore(agent.credentials).current()
    assert renewed is not None
    deadline = time.monotonic() + 30
    while agent.status()["serial"] == status["serial"]:
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.1)
    assert agent.proc.poll() is None


def test_superseded_without_evidence_exits_79_at_once(registrar_factory: Any,
                                                      agent_factory: Any,
                                                      tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", TTL)})
    agent, creds = start(reg, agent_factory)
    renew_behind_its_back(reg, creds.chain_path, creds.key_path, tmp_path / "clone")
    assert agent.wait_exit(30) == 79, agent.log_text()[-3000:]
    assert time.time() < creds.not_after.timestamp(), "exited before the cert expired"
    log = agent.log_text()
    assert "certificate_superseded" in log and "cloned or restored" in log
    assert "mesh-registrar token create" in log
