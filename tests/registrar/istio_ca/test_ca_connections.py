"""The Istio CA port's connections go through the worker's connection gate and
the TLS handshake bound, as the HTTPS API's do: a connection that never starts
TLS is cut after ``HANDSHAKE_SECONDS``; connections are capped per source address
and in total, and the caps count both ports' connections (one worker, one file
limit). Legitimate callers keep being answered."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from registrar.api.connections import HANDSHAKE_SECONDS
from tests.fixtures.registrar import RegistrarProcess, free_port
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key
from tests.registrar.istio_ca.test_create_certificate import GROUPS, Ca
from tests.registrar.test_connections import closed_by_server, silence_cut_after
from tests.registrar.test_renew import enrol

PER_ADDRESS, TOTAL = 3, 16  # 16: the lowest max_connections allowed


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    port, ca_port = free_port(), free_port()
    reg = RegistrarProcess(
        tmp_path_factory.mktemp("ca-connections"), groups=GROUPS, port=port,
        config={"istio_ca": {"listen": f"127.0.0.1:{ca_port}"},
                "limits": {"max_connections_per_address": PER_ADDRESS,
                           "max_connections": TOTAL}})
    try:
        reg.start()
        made = Ca(reg, f"127.0.0.1:{ca_port}")
        made.wait_serving()
        assert answered(made)
        yield made
    finally:
        reg.kill()


def port_of(ca: Ca) -> int:
    return int(ca.target.rpartition(":")[2])


def answered(ca: Ca) -> bool:
    """A CreateCertificate from 127.0.0.1 gets an answer from the registrar (no
    credentials: refused as unauthenticated, which is an answer), not UNAVAILABLE."""
    return ca.call(csr_pem(ec_key()), timeout=10).code == grpc.StatusCode.UNAUTHENTICATED


def tls_to(ca: Ca, port: int, source: str, alpn: str | None,
           cert: Path | None = None, key: Path | None = None) -> ssl.SSLSocket:
    ctx = calls.tls(ca.reg, cert, key)
    if alpn is not None:
        ctx.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


# HTTP/2's client preface and an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@contextmanager
def held(target: Ca, *, ca: int = 0, api: int = 0,
         source: str) -> Iterator[list[ssl.SSLSocket]]:
    """Connections held open, each shown admitted by an answer (the gate counts a
    connection once its handshake is done, before any byte is answered): ``ca`` on
    the CA port (HTTP/2 preface -> the server's SETTINGS), ``api`` on the HTTPS
    API's port (a kept-alive /healthz)."""
    with ExitStack() as stack:
        out = []
        for _ in range(ca):
            s = stack.enter_context(tls_to(target, port_of(target), source, "h2"))
            s.sendall(H2_PREFACE)
            assert s.recv(4096), "no HTTP/2 SETTINGS from the CA port"
            out.append(s)
        for _ in range(api):
            s = stack.enter_context(tls_to(target, target.reg.port, source, None))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
            out.append(s)
        yield out


def refused_on_ca_port(ca: Ca, source: str) -> bool:
    """The handshake completes, then the server drops the connection unanswered."""
    try:
        s = tls_to(ca, port_of(ca), source, "h2")
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    with s:
        return closed_by_server(s, within=10.0)  # generous: a loaded CI machine


def test_the_ca_port_caps_connections_per_address_and_shares_the_workers_caps(
        ca: Ca) -> None:
    with held(ca, ca=PER_ADDRESS, source="127.0.0.2") as first:
        assert all(not closed_by_server(s, within=0.3) for s in first)  # held, not cut
        assert refused_on_ca_port(ca, "127.0.0.2")
        assert answered(ca)  # other addresses are served
        first[0].close()
        time.sleep(0.3)
        assert not refused_on_ca_port(ca, "127.0.0.2")  # a freed slot is usable again
    # The per-address cap counts the API's connections too (one worker's files).
    with held(ca, ca=1, api=PER_ADDRESS - 1, source="127.0.0.3"):
        assert refused_on_ca_port(ca, "127.0.0.3")
    # And so does the total: TOTAL connections over both ports fill the worker.
    with ExitStack() as stack:
        for i in range(TOTAL // PER_ADDRESS):  # 5 addresses x (2 on the CA port + 1 API)
            stack.enter_context(held(ca, ca=2, api=1, source=f"127.0.0.{10 + i}"))
        stack.enter_context(held(ca, ca=TOTAL % PER_ADDRESS, source="127.0.0.20"))
        assert refused_on_ca_port(ca, "127.0.0.21")
    assert answered(ca)
    log = ca.reg.log_text()
    assert "refusing connections: 3 connections open from 127.0.0.2" in log
    assert f"refusing connections: {TOTAL} connections open in this worker" in log


def test_a_connection_that_never_starts_tls_is_cut_after_the_handshake_bound(
        ca: Ca) -> None:
    took = silence_cut_after(port_of(ca), "127.0.0.8")
    assert HANDSHAKE_SECONDS - 1 <= took <= HANDSHAKE_SECONDS + 5, took
    assert answered(ca)


def test_a_foreign_client_certificate_gets_its_alert_and_a_log_line(
        ca: Ca, registrar_factory: Callable[..., RegistrarProcess],
        tmp_path: Path) -> None:
    other = registrar_factory(groups={"web": ("shop", "web-vm", 3600)})
    cert, key = enrol(other, tmp_path / "foreign")  # same SPIFFE ID, another CA
    # TLS 1.3: the server checks the client's certificate after the client's side
    # of the handshake is done; the refusal arrives on the first read.
    with tls_to(ca, port_of(ca), "127.0.0.9", "h2", cert, key) as s, \
            pytest.raises(ssl.SSLError) as refused:
        s.sendall(H2_PREFACE)
        s.recv(4096)
    assert refused.value.reason == "TLSV1_ALERT_UNKNOWN_CA", refused.value
    line = "TLS handshake from 127.0.0.9 refused: client certificate unknown_ca (alert sent)"
    deadline = time.monotonic() + 10
    while line not in ca.reg.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in ca.reg.log_text()
    assert answered(ca)
