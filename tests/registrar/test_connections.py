"""Connections through the real server: slow heads, slow bodies and idle
keep-alives are cut off after ``request_timeout``; connections per source
address and in total are capped; legitimate clients keep being served."""

from __future__ import annotations

import concurrent.futures
import resource
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress

import pytest

from registrar.api.connections import HANDSHAKE_SECONDS
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key

HEAD = b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def connect(reg: RegistrarProcess, source: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", reg.port), timeout=10,
                                   source_address=(source, 0))
    return calls.tls(reg).wrap_socket(raw, server_hostname="127.0.0.1")


def closed_by_server(s: ssl.SSLSocket, within: float) -> bool:
    """True when the server closes (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    return True


def silence_cut_after(port: int, source: str) -> float:
    """Seconds until the server closes a TCP connection to 127.0.0.1:``port`` on which
    nothing is sent (no TLS handshake ever starts); fails if it sends anything or
    keeps it open past ``HANDSHAKE_SECONDS`` + 10 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as silent:
        started = time.monotonic()
        silent.settimeout(HANDSHAKE_SECONDS + 10)
        try:
            data = silent.recv(4096)
        except ConnectionError:
            data = b""
        assert data == b"", data
        return time.monotonic() - started


def refused(reg: RegistrarProcess, source: str) -> bool:
    """Handshake done, then the server drops it without answering /healthz."""
    try:
        s = connect(reg, source)
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    with s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return not s.recv(4096)
        except (ConnectionError, ssl.SSLError, OSError):
            return True


def test_slow_head_slow_body_and_idle_connections_are_cut_off(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"limits": {"request_timeout": "2s"}})
    idle, slow_head, slow_body, kept_alive = (connect(reg) for _ in range(4))
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200 ")
    slow_head.sendall(HEAD)
    slow_body.sendall(HEAD + b"Content-Length: 1000\r\n\r\n{")
    started = time.monotonic()
    for _ in range(10):  # trickling bytes does not extend the deadline
        for s, byte in ((slow_head, b"X-A: b\r\n"), (slow_body, b" ")):
            with suppress(ConnectionError, ssl.SSLError, OSError):
                s.sendall(byte)
        time.sleep(0.5)
    for s in (idle, slow_head, slow_body, kept_alive):
        assert closed_by_server(s, within=1.0)
        s.close()
    assert time.monotonic() - started < 7.0
    assert calls.healthy(reg)


def test_a_request_within_the_timeout_is_answered(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    """The clock restarts after each answer: two requests 1.5 s apart on one
    connection with a 2 s timeout both succeed."""
    reg = registrar_factory(config={"limits": {"request_timeout": "2s"}})
    with connect(reg) as s:
        for _ in range(2):
            time.sleep(1.5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")


@contextmanager
def held(reg: RegistrarProcess, sources: list[str]) -> Iterator[list[ssl.SSLSocket]]:
    with ExitStack() as stack:
        sockets = []
        for source in sources:
            s = stack.enter_context(connect(reg, source))
            s.sendall(HEAD)  # a head that never ends
            sockets.append(s)
        yield sockets


def test_connections_are_capped_per_address_and_in_total(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"limits": {"max_connections_per_address": 3,
                                               "max_connections": 16}})
    with held(reg, ["127.0.0.2"] * 3) as first:
        assert refused(reg, "127.0.0.2")
        assert calls.healthy(reg)  # other addresses are served
        first[0].close()
        time.sleep(0.2)
        with held(reg, ["127.0.0.2"]):  # a freed slot is usable again
            assert refused(reg, "127.0.0.2")
    sources = [f"127.0.0.{3 + i // 3}" for i in range(16)]  # 3 per address, 16 in all
    with held(reg, sources):
        assert refused(reg, "127.0.0.200")
    assert calls.healthy(reg)
    log = reg.log_text()
    assert log.count("refusing connections: 3 connections open from 127.0.0.2") == 1
    assert "refusing connections: 16 connections open in this worker" in log


def test_bootstraps_succeed_while_2000_slow_connections_are_attempted(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    """The registrar gets systemd's default of 1,024 files (what the unit had before
    LimitNOFILE): 2,000 slow connections from one address must not starve the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # this test process holds the 2,000 sockets
        assert hard >= 4096, f"RLIMIT_NOFILE hard limit {hard}: cannot hold 2,000 sockets"
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    reg = registrar_factory(prefix=["prlimit", "--nofile=1024:1024", "--"])
    tokens = [reg.create_token("default") for _ in range(16)]

    def bootstrap(token: str) -> int:
        with calls.client(reg) as c:
            return calls.post(c, "/v1/attest", json=calls.attest_body(
                token, csr_pem(ec_key())))[0]

    with ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses, stuck = [], 0
        for i in range(2000):
            try:
                raw = socket.create_connection(("127.0.0.1", reg.port), timeout=2,
                                               source_address=("127.0.0.2", 0))
                s = stack.enter_context(calls.tls(reg).wrap_socket(
                    raw, server_hostname="127.0.0.1"))
                s.sendall(HEAD)
                stuck = 0
            except TimeoutError:  # the server no longer accepts: it ran out of files
                stuck += 1
                if stuck == 20:
                    break
            except (ConnectionError, ssl.SSLError, OSError):
                pass  # refused: the server dropped it after the handshake
            if i % 125 == 0:
                statuses.append(pool.submit(bootstrap, tokens[i // 125]))
        assert stuck < 20, "the registrar stopped completing handshakes"
        assert [f.result() for f in statuses] == [200] * 16
        assert calls.healthy(reg)
    assert "refusing connections: 128 connections open from 127.0.0.2" in reg.log_text()


@pytest.mark.parametrize("files", [1024, 65536])
def test_the_total_cap_stays_below_the_file_limit(files: int) -> None:
    from registrar.api.connections import RESERVED_FILES, usable_connections
    assert usable_connections(10_000, files) == min(10_000, files - RESERVED_FILES)
    assert usable_connections(10_000, files) < files
