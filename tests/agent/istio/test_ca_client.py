"""How the istiod CA client classifies failures it can meet before istiod
answers: nobody listening (retry), and a server whose certificate does not
chain to root-cert.pem (a configuration error, exit 78). Successful issuance
and renewal are tested against the real istiod in tests/istio/."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.attest.base import Evidence
from agent.istio.ca_client import IstioCAClient
from agent.istio.vm import load_vm
from agent.registrar_client import RegistrarError
from meshcore.secret import Secret
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import ISTIOD_HOST, write_vm_files


def _server_cert(ca: TestCA, tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(ISTIOD_HOST)]), True)
            .sign(ca.key, hashes.SHA256()))
    chain, key_file = tmp / "srv.pem", tmp / "srv.key"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return chain, key_file


@pytest.fixture
def foreign_tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS server (h2 ALPN) whose certificate comes from a CA the VM does not trust."""
    chain, key = _server_cert(TestCA(), tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(5)
    listener.close()


def _client(tmp_path: Path, port: int) -> IstioCAClient:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=TestCA().bundle_pem,
                               istiod_ip="127.0.0.1",
                               env_extra={"CA_ADDR": f"{ISTIOD_HOST}:{port}"})
    return IstioCAClient(load_vm(istio_dir), cert_ttl=3600, timeout=3)


def _attest(client: IstioCAClient) -> RegistrarError:
    evidence = Evidence("istio-token", {"token": Secret("a.b.c")})
    with pytest.raises(RegistrarError) as err:
        asyncio.run(client.attest(evidence, b"csr", challenge=None, hostname="h",
                                  addresses=()))
    return err.value


def test_an_untrusted_istiod_is_a_config_error(tmp_path: Path, foreign_tls_server: int) -> None:
    client = _client(tmp_path, foreign_tls_server)
    assert client.target == f"127.0.0.1:{foreign_tls_server}"   # from the hosts file
    err = _attest(client)
    assert (err.action, err.reason) == ("fatal", "istiod_untrusted")
    assert "root-cert.pem" in err.message and ISTIOD_HOST in err.message


def test_nobody_listening_is_retried(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _attest(_client(tmp_path, port))
    assert (err.action, err.reason) == ("retry", "unreachable")
