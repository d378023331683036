"""First boot with a join token, restart without it, and the registrar's answers
the agent must act on. Real registrar process, real TLS, real files."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from agent.credentials import CredentialStore


def verify_chain(creds_dir: Path, spiffe_id: str) -> x509.Certificate:
    chain = x509.load_pem_x509_certificates((creds_dir / "cert-chain.pem").read_bytes())
    roots = x509.load_pem_x509_certificates((creds_dir / "bundle.pem").read_bytes())
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    uris = [san for san in verified.subjects if isinstance(san, x509.UniformResourceIdentifier)]
    assert [u.value for u in uris] == [spiffe_id]
    return chain[0]


def test_first_boot_with_a_token_then_restart_reuses_stored_credentials(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    token = reg.create_token("web", ttl="10m")
    agent = agent_factory(reg, token=token)
    agent.start()
    agent.wait_ready()

    status = agent.status()
    expected = "spiffe://example.org/ns/prod/sa/web-vm"
    assert status["spiffe_id"] == expected
    assert not agent.token_file.exists(), "the token must be deleted after success"
    creds = CredentialStore(agent.credentials).current()
    assert creds is not None
    first_serial = creds.serial_hex
    verify_chain(creds.directory, expected)
    assert stat.S_IMODE(creds.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((agent.state_dir / "state.json").stat().st_mode) == 0o600
    # With nothing stored, the key helper starts before the daemon's modules load.
    ahead = "key helper started ahead of the first attestation"
    log = agent.log_text()
    assert ahead in log and log.index(ahead) < log.index("daemon modules loaded"), log
    assert agent.stop() == 0

    # Restart with no token: the stored cert is still valid and is used at once
    # (and no key helper is started for nothing).
    agent.start()
    agent.wait_ready()
    assert agent.status()["serial"] == first_serial
    assert agent.stop() == 0
    assert agent.log_text().count(ahead) == 1


def test_restart_without_token_renews_over_mtls(registrar_factory: Any,
                                                agent_factory: Any) -> None:
    # 20 s certificates: the restart lands past the renewal point (10 s) with
    # ~10 s to spare before expiry, enough for a slow, loaded machine.
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 20)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          extra={"rotation": {"renew_at": 0.5, "jitter": 0.0}})
    agent.start()
    agent.wait_ready()
    first = agent.status()["serial"]
    assert agent.stop() == 0
    assert not agent.token_file.exists()
    time.sleep(10.5)  # past the renewal point (10 s of 20), before expiry
    agent.start()
    agent.wait_ready()
    deadline = time.monotonic() + 20
    while agent.status()["serial"] == first and time.monotonic() < deadline:
        time.sleep(0.1)
    status = agent.status()
    assert status["serial"] != first, agent.log_text()
    assert status["rotations"] >= 1
    assert "renew ok" in reg.log_text()
    assert agent.stop() == 0


def test_a_spent_token_is_rejected_with_a_reason_and_nothing_is_written(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    token = reg.create_token("web", ttl="10m")
    first = agent_factory(reg, name="first", token=token)
    first.start()
    first.wait_ready()
    second = agent_factory(reg, name="second", token=token)
    second.start()
    code = second.wait_exit(timeout=30)
    assert code == 79
    log = second.log_text()
    assert "token_spent" in log
    assert not (second.credentials / "current").exists()
    assert second.token_file.exists(), "a rejected token is kept for the operator to inspect"
    assert token not in log and token not in first.log_text() and token not in reg.log_text()
