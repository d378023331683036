"""A client certificate the registrar cannot trust: the handshake ends with a TLS
alert the client can read (not a bare EOF), and the log says why, a bounded number
of times a minute."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.errors import RegistrarError
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key
from tests.registrar.test_renew import enrol, mtls


def _renew_raw(reg: RegistrarProcess, cert: Path, key: Path) -> str:
    """The TLS error the client sees sending a renew request; "" if none."""
    with socket.create_connection(("127.0.0.1", reg.port), timeout=10) as raw, \
            calls.tls(reg, cert, key).wrap_socket(raw, server_hostname="127.0.0.1") as s:
        # TLS 1.3: the client's handshake is done before the server has checked its
        # certificate, so the refusal arrives on the first read.
        try:
            s.sendall(b"POST /v1/renew HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 2\r\n\r\n{}")
            s.recv(4096)
        except ssl.SSLError as exc:
            return str(getattr(exc, "reason", "") or exc)
    return ""


def test_a_foreign_ca_client_certificate_gets_an_unknown_ca_alert_and_a_bounded_log(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("default", "web-vm", 3600)})
    other = registrar_factory(groups={"web": ("default", "web-vm", 3600)})
    cert, key = enrol(other, tmp_path / "foreign")  # same SPIFFE ID, another CA
    seen = {_renew_raw(reg, cert, key) for _ in range(30)}
    assert seen == {"TLSV1_ALERT_UNKNOWN_CA"}
    # Our own client is unaffected.
    own_cert, own_key = enrol(reg, tmp_path / "own")
    with mtls(reg, own_cert, own_key) as c:
        assert calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})[0] == 200
    lines = [line for line in reg.log_text().splitlines() if "TLS handshake from" in line]
    assert 1 <= len(lines) <= 10, lines
    assert all("127.0.0.1 refused: client certificate unknown_ca (alert sent)" in line
               for line in lines)
    assert "held back" in lines[-1]


def test_an_expired_client_certificate_gets_a_certificate_expired_alert(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("default", "web-vm", 1)})
    cert, key = enrol(reg, tmp_path)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    time.sleep(max(0.0, leaf.not_valid_after_utc.timestamp() - time.time()) + 1.5)
    assert _renew_raw(reg, cert, key) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    # The server logs after it sent the alert: the client can read it first.
    line = "refused: client certificate certificate_expired (alert sent)"
    deadline = time.monotonic() + 10
    while line not in reg.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in reg.log_text()
    assert calls.healthy(reg)
    # The agent's client reads the same alert (after the handshake, on the first
    # read) as a classified refusal, never as a raw ssl.SSLError that would end the
    # daemon (seen: a workload-settings fetch with a just-expired certificate).
    client = RegistrarClient(reg.url, reg.ca_file, timeout=10)
    for call in (client.workload_settings(chain_file=cert, key_file=key),
                 client.renew(csr_pem(ec_key()).encode(), chain_file=cert, key_file=key,
                              hostname="vm", addresses=[])):
        with pytest.raises(RegistrarError) as refused:
            asyncio.run(call)
        assert (refused.value.action, refused.value.reason) == (
            "reattest", "client_cert_rejected"), refused.value


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello"])
def test_a_failed_handshake_without_a_certificate_is_logged_by_cause_only(
        registrar: RegistrarProcess, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", registrar.port), timeout=10) as s:
        s.sendall(garbage)
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert calls.healthy(registrar)
    log = registrar.log_text()
    assert "hello" not in log and "GET /" not in log
    assert "refused: tls " in log
