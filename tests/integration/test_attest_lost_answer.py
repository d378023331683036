"""The answer to the agent's first attest is lost after the registrar committed it
(the join token is spent, the workload recorded): the agent's retry asks with the
same key and gets that certificate, within one run and across a kill -9 of the
agent. The same for an EC2 first use (the instance's one attestation claimed),
the agent reading its identity document from the fake IMDSv2 server
(tests/fakes/ec2_metadata.py). Real registrar, real ``mesh-agent run``; between
them a TCP relay that passes the TLS handshake and the request, then cuts the
connection once the registrar's answer starts, without passing it on.

A relay that cannot read TLS tells the answer from the handshake by TLS record
sizes: the client's request (it carries a CSR) is the first application-data
record over 256 bytes, and the answer (a chain and a bundle) is more than
``ANSWER_BYTES`` of application data after it; anything smaller after the
request (TLS 1.3 session tickets) is dropped with it."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509

from agent.identity.attest_key import FILE_NAME
from agent.identity.host import local_addresses
from tests.cloud.test_e2e import evidence_options
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.ec2_metadata import FakeEc2
from tests.fakes.serve import serving
from tests.fixtures.registrar import RegistrarProcess

APPLICATION_DATA = 0x17
REQUEST_BYTES = 256
ANSWER_BYTES = 1500


class _Records:
    """Splits a byte stream into TLS records: (type, length) of each whole one."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buffer += data
        records = []
        while len(self._buffer) >= 5:
            kind, _, length = struct.unpack("!BHH", self._buffer[:5])
            if len(self._buffer) < 5 + length:
                break
            records.append((kind, length))
            self._buffer = self._buffer[5 + length:]
        return records


class LosingRelay:
    """127.0.0.1:port -> the registrar. While ``losing`` is set, each connection's
    answer is cut off as described above (``lost`` counts them)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.losing = threading.Event()
        self.lost = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        losing = self.losing.is_set()
        asked = threading.Event()

        def to_upstream() -> None:
            records = _Records()
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
                    if any(kind == APPLICATION_DATA and length > REQUEST_BYTES
                           for kind, length in records.feed(data)):
                        asked.set()
            except OSError:
                pass  # the client went: end the request side
            finally:
                _shut(upstream)

        threading.Thread(target=to_upstream, daemon=True).start()
        records, dropped = _Records(), 0
        try:
            while data := upstream.recv(65536):
                if not (losing and asked.is_set()):
                    client.sendall(data)
                    continue
                dropped += sum(length for kind, length in records.feed(data)
                               if kind == APPLICATION_DATA)
                if dropped > ANSWER_BYTES:
                    with self._lock:
                        self.lost += 1
                    break
        except OSError:
            pass
        # A reset, as a dying replica's kernel sends it: no answer reaches the client.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        upstream.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


@dataclass(frozen=True)
class FirstAttest:
    """How the agent attests first: a join token, or an EC2 identity document from
    a fake IMDSv2 server at ``metadata_url`` (the registrar trusting its test keys)."""

    metadata_url: str | None = None
    registrar_config: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(params=["join_token", "aws"])
def first(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstAttest]:
    if request.param == "join_token":
        yield FirstAttest()
        return
    pki = CloudPki.create(tmp_path_factory.mktemp("cloud-pki"))
    # The document's privateIp is the address the agent reports: this host's first.
    document = pki.aws_document(private_ip=(local_addresses() or ["10.0.0.12"])[0])
    with serving(FakeEc2(pki, document=document).app()) as url:
        yield FirstAttest(url, {"evidence": {"aws": evidence_options("aws", pki, "")}})


@pytest.fixture
def relay(registrar_factory: Any,
          first: FirstAttest) -> Iterator[tuple[RegistrarProcess, LosingRelay]]:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)},
                            config=first.registrar_config)
    losing = LosingRelay((reg.host, reg.port))
    try:
        yield reg, losing
    finally:
        losing.close()


def _agent(reg: RegistrarProcess, losing: LosingRelay, agent_factory: Any,
           first: FirstAttest) -> Any:
    url = f"https://127.0.0.1:{losing.port}"
    if first.metadata_url is None:
        return agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                             extra={"registrar": {"url": url}})
    return agent_factory(reg, extra={"registrar": {"url": url}, "attestation": {
        "method": "aws", "aws": {"metadata_url": first.metadata_url}}})


def _committed(reg: RegistrarProcess) -> bool:
    """The first attestation is recorded: the token spent, or the instance claimed
    with its certificate."""
    return reg.sql("SELECT COUNT(*) FROM certs") == [(1,)]


def _one_identity(reg: RegistrarProcess, agent: Any) -> None:
    """One workload, one certificate, and it is the one the agent serves."""
    workloads = reg.sql("SELECT id, state, current_serial, pending_serial FROM workloads")
    certs = reg.sql("SELECT serial FROM certs")
    assert len(workloads) == 1, workloads
    _, state, current, pending = workloads[0]
    assert (state, pending) == ("active", None)
    leaf = x509.load_pem_x509_certificate(
        (agent.credentials / "current" / "cert-chain.pem").read_bytes())
    assert [tuple(c) for c in certs] == [(format(leaf.serial_number, "x"),)] == [(current,)]
    assert "answered_again=same_key" in reg.log_text()
    assert not (agent.state_dir / FILE_NAME).exists()  # stored: the kept key is gone
    assert "PRIVATE KEY" not in agent.log_text()


def test_a_lost_answer_is_retried_with_the_same_key(relay: Any, agent_factory: Any,
                                                    first: FirstAttest) -> None:
    reg, losing = relay
    losing.losing.set()
    agent = _agent(reg, losing, agent_factory, first)
    agent.start()
    deadline = time.monotonic() + 60
    while losing.lost == 0:
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.02)
    losing.losing.clear()  # the next connection goes through
    agent.wait_ready(timeout=60)
    if first.metadata_url is None:
        assert reg.sql("SELECT COUNT(*) FROM tokens WHERE used_at IS NOT NULL") == [(1,)]
    _one_identity(reg, agent)
    assert "token_spent" not in agent.log_text()
    assert "instance_already_attested" not in agent.log_text()
    assert agent.stop() == 0


def test_an_agent_killed_after_a_lost_answer_asks_again_with_the_kept_key(
        relay: Any, agent_factory: Any, first: FirstAttest) -> None:
    reg, losing = relay
    losing.losing.set()  # every answer lost until the agent is killed
    agent = _agent(reg, losing, agent_factory, first)
    agent.start()
    deadline = time.monotonic() + 60
    while losing.lost == 0 or not _committed(reg):
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.05)
    agent.kill()
    kept = agent.state_dir / FILE_NAME
    assert kept.stat().st_mode & 0o777 == 0o600
    assert not (agent.credentials / "current").exists()
    losing.losing.clear()
    agent.start()
    agent.wait_ready(timeout=60)
    assert "attesting with the key kept from an earlier try" in agent.log_text()
    _one_identity(reg, agent)
    assert os.path.exists(agent.token_file) is False  # spent only once stored (or none)
    assert agent.stop() == 0
