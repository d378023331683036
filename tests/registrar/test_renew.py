"""Renewal over mTLS: the client certificate is the only credential, checked on
every connection (no resumption) and every request (inventory state)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem
from tests.registrar.test_attest import SPIFFE_WEB, verify_chain


def enrol(reg: RegistrarProcess, where: Path, group: str = "web") -> tuple[Path, Path]:
    """Attest with a fresh token; write the key and chain like an agent would."""
    key = ec_key()
    with calls.client(reg) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            reg.create_token(group, "10m"), csr_pem(key)))
    assert status == 200, body
    where.mkdir(parents=True, exist_ok=True)
    (where / "key.pem").write_bytes(key_pem(key))
    (where / "cert-chain.pem").write_text(body["cert_chain"])
    return where / "cert-chain.pem", where / "key.pem"


def mtls(reg: RegistrarProcess, cert: Path, key: Path) -> httpx.Client:
    return httpx.Client(base_url=reg.url, verify=calls.tls(reg, cert, key), timeout=30)


def workload_id(reg: RegistrarProcess, serial_source: Path) -> int:
    import json
    leaf = x509.load_pem_x509_certificate(serial_source.read_bytes())
    uri = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)[0]
    rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
    return int(max(r["id"] for r in rows if r["spiffe_id"] == uri))


def test_renew_over_mtls_keeps_the_identity(registrar: RegistrarProcess, tmp_path: Path) -> None:
    cert, key = enrol(registrar, tmp_path / "gen1")
    new_key = ec_key()
    with mtls(registrar, cert, key) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(new_key),
                                                         "hostname": "vm-renewed"})
    assert status == 200, body
    assert body["spiffe_id"] == SPIFFE_WEB
    leaf = verify_chain(body["cert_chain"], body["trust_bundle"])
    assert leaf.public_key() == new_key.public_key()
    assert leaf.serial_number != x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    assert "vm-renewed" in registrar.cli("workloads", "list").stdout

    # The renewed certificate renews in turn (the agent's steady state).
    (tmp_path / "gen2").mkdir()
    (tmp_path / "gen2" / "cert-chain.pem").write_text(body["cert_chain"])
    (tmp_path / "gen2" / "key.pem").write_bytes(key_pem(new_key))
    with mtls(registrar, tmp_path / "gen2" / "cert-chain.pem", tmp_path / "gen2" / "key.pem") as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert status == 200 and body["spiffe_id"] == SPIFFE_WEB


def test_renew_with_leaf_only_still_verifies(registrar: RegistrarProcess, tmp_path: Path) -> None:
    cert, key = enrol(registrar, tmp_path)
    leaf_only = tmp_path / "leaf.pem"
    leaf_only.write_text(cert.read_text().split("-----END CERTIFICATE-----")[0]
                         + "-----END CERTIFICATE-----\n")
    with mtls(registrar, leaf_only, key) as c:
        status, _ = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert status == 200


def test_renew_csr_for_another_identity_is_refused(registrar: RegistrarProcess,
                                                   tmp_path: Path) -> None:
    cert, key = enrol(registrar, tmp_path)
    with mtls(registrar, cert, key) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(
            ec_key(), uris=("spiffe://example.org/ns/data/sa/db-vm",))})
    assert (status, body["reason"]) == (400, "csr_identity_mismatch")


@pytest.mark.parametrize(("command", "reason"), [("evict", "identity_evicted"),
                                                 ("revoke", "identity_revoked")])
def test_renew_after_evict_or_revoke_is_refused_even_on_a_live_connection(
        registrar: RegistrarProcess, tmp_path: Path, command: str, reason: str) -> None:
    cert, key = enrol(registrar, tmp_path)
    with mtls(registrar, cert, key) as c:
        status, _ = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
        assert status == 200
        registrar.cli("workloads", command, str(workload_id(registrar, cert)))
        # Same keep-alive connection: the inventory is checked per request.
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert (status, body["reason"], body["action"]) == (403, reason, "reattest")
    assert calls.healthy(registrar)


def test_renew_with_a_cert_from_another_ca_fails_the_handshake(
        registrar: RegistrarProcess, registrar_factory: Callable[..., RegistrarProcess],
        tmp_path: Path) -> None:
    other = registrar_factory(groups={"web": ("default", "web-vm", 3600)})
    cert, key = enrol(other, tmp_path)  # same SPIFFE ID, foreign CA
    with mtls(registrar, cert, key) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/renew", json={"csr": csr_pem(ec_key())})
    assert calls.healthy(registrar)


def test_cert_from_our_ca_unknown_to_the_inventory_is_refused(
        registrar: RegistrarProcess, tmp_path: Path) -> None:
    """Chains to our root (TLS accepts it) but was never recorded: identity_unknown."""
    from registrar.ca.authority import Authority, load_pem_certs, load_signing_key, pem
    state = registrar.state_dir
    ca_cert = load_pem_certs(state / "ca-cert.pem")[0]
    authority = Authority(cert=ca_cert, key=load_signing_key(state / "ca-key.pem"),
                          intermediates=[ca_cert], roots=load_pem_certs(state / "root-cert.pem"))
    key = ec_key()
    issued = authority.issue(key.public_key(), SPIFFE_WEB, 600)
    (tmp_path / "chain.pem").write_text(issued.chain_pem)
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    with mtls(registrar, tmp_path / "chain.pem", tmp_path / "key.pem") as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert (status, body["reason"]) == (403, "identity_unknown")
    assert pem([issued.certificate])  # the forged leaf really is a PEM cert


def test_tls_1_2_is_refused(registrar: RegistrarProcess) -> None:
    """TLS 1.2 would resume by session ID from OpenSSL's cache (Python cannot turn it
    off), skipping the client chain check: the registrar serves TLS 1.3 only."""
    ctx = calls.tls(registrar)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", registrar.port)),
            server_hostname="127.0.0.1"):
        pass
    assert calls.healthy(registrar)


def test_no_tls_session_resumption(registrar: RegistrarProcess, tmp_path: Path) -> None:
    """A client offering its previous session gets a full handshake, and presents
    (and the server verifies) its certificate again."""
    cert, key = enrol(registrar, tmp_path)
    ctx = calls.tls(registrar, cert, key)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", registrar.port)),
                         server_hostname="127.0.0.1") as s:
        s.sendall(request)
        assert b"200" in s.recv(4096)
        s.recv(4096)  # TLS 1.3 tickets, if any, arrive after the handshake
        session = s.session
    assert session is not None
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", registrar.port)),
                         server_hostname="127.0.0.1", session=session) as s2:
        s2.sendall(request)
        assert b"200" in s2.recv(4096)
        assert s2.version() == "TLSv1.3"
        assert not s2.session_reused
        assert session.has_ticket is False


def test_renew_with_an_expired_cert_fails_the_handshake(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    import time
    reg = registrar_factory(groups={"web": ("default", "web-vm", 1)})
    cert, key = enrol(reg, tmp_path)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 1 <= lifetime.total_seconds() <= 2  # 1 s TTL + 166 ms backdating (whole seconds)
    time.sleep(max(0.0, leaf.not_valid_after_utc.timestamp() - time.time()) + 1.5)
    with mtls(reg, cert, key) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/renew", json={"csr": csr_pem(ec_key())})
    assert calls.healthy(reg)
