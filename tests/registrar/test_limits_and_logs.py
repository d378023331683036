"""Rate limiting (429 + Retry-After), multi-worker single use, and what the log never holds."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import csr_pem, ec_key, key_pem


def test_empty_bucket_gives_429_with_retry_after(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"limits": {"rate": {
        "attest": {"per_second": 0.2, "burst": 2}}}})
    with calls.client(reg) as c:
        statuses = []
        for _ in range(4):
            response = c.post("/v1/attest", json={})
            spec.check(response)
            statuses.append(response.status_code)
        assert statuses[:2] == [400, 400] and statuses[2:] == [429, 429]
        assert response.json()["reason"] == "rate_limited"
        assert response.json()["action"] == "retry"
        assert 1 <= int(response.headers["Retry-After"]) <= 5
        assert response.json()["retry_after"] == int(response.headers["Retry-After"])
        # Other endpoint families have their own buckets.
        assert calls.get(c, "/v1/bundle")[0] == 200
    metrics = httpx.get(f"{reg.url}/metrics", verify=calls.tls(reg)).text
    assert 'registrar_requests_total{operation="attest",reason="rate_limited",result="rejected"}' \
        in metrics


def test_single_use_holds_across_worker_processes(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(workers=2)
    token = reg.create_token("default")
    csrs = [csr_pem(ec_key()) for _ in range(50)]

    async def race() -> list[int]:
        async def one(csr: str) -> int:
            # A new connection each: SO_REUSEPORT spreads them over both workers.
            async with httpx.AsyncClient(base_url=reg.url, verify=calls.tls(reg),
                                         timeout=60) as c:
                return (await c.post("/v1/attest", json=calls.attest_body(token, csr))
                        ).status_code
        return await asyncio.gather(*(one(csr) for csr in csrs))

    assert sorted(asyncio.run(race())) == [200] + [401] * 49
    assert reg.log_text().count("serving ") == 2


def test_tokens_and_keys_never_reach_the_log(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    reg = registrar_factory()
    key = ec_key()
    good, spent, revoked = (reg.create_token("default") for _ in range(3))
    csr = csr_pem(key)
    with calls.client(reg) as c:
        assert calls.post(c, "/v1/attest", json=calls.attest_body(good, csr))[0] == 200
        # A retry with the same key is answered again; another key meets the spent token.
        assert calls.post(c, "/v1/attest", json=calls.attest_body(good, csr))[0] == 200
        assert calls.post(c, "/v1/attest", json=calls.attest_body(
            good, csr_pem(ec_key())))[0] == 401
        assert calls.post(c, "/v1/attest", json=calls.attest_body(spent + "x", csr))[0] == 401
        assert calls.post(c, "/v1/attest", json={"evidence": {"type": "join_token",
                                                              "token": revoked}})[0] == 400
    reg.stop()
    log = reg.log_text()
    assert "attest ok" in log and "token_spent" in log and "token_invalid" in log
    assert "answered_again=same_key" in log
    secrets = [good, spent, revoked, csr.splitlines()[1],
               key_pem(key).decode().splitlines()[1],
               (reg.state_dir / "ca-key.pem").read_text().splitlines()[1],
               (reg.state_dir / "server-key.pem").read_text().splitlines()[1]]
    for secret in secrets:
        assert secret not in log


def _metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_metrics_count_decisions_across_workers(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(workers=2)
    tokens = [reg.create_token("default") for _ in range(6)]
    for token in tokens[:4]:
        with calls.client(reg) as c:  # a new connection each: both workers serve some
            assert calls.post(c, "/v1/attest", json=calls.attest_body(
                token, csr_pem(ec_key())))[0] == 200
    with calls.client(reg) as c:
        assert calls.post(c, "/v1/attest", json=calls.attest_body(
            tokens[0], csr_pem(ec_key())))[0] == 401
    expected = (4.0, 1.0, 5.0, 2.0)

    def sums() -> tuple[float, ...]:
        with calls.client(reg) as c:  # a new connection: either worker may answer
            text = calls.get(c, "/metrics")[1]
        return (_metric(text, 'registrar_requests_total{operation="attest",reason="",'
                              'result="ok"}'),
                _metric(text, 'registrar_requests_total{operation="attest",'
                              'reason="token_spent",result="rejected"}'),
                _metric(text, 'registrar_request_seconds_count{operation="attest"}'),
                _metric(text, "registrar_tokens_outstanding"))

    # Each worker adds its counts to the shared table about once a second: wait
    # until the sums are complete, then every page, whichever worker answers, has them.
    deadline = time.monotonic() + 60
    while sums() != expected:
        assert time.monotonic() < deadline, sums()
        time.sleep(0.2)
    for _ in range(4):
        assert sums() == expected


def test_client_disconnects_mid_body_are_not_errors(registrar: RegistrarProcess) -> None:
    for _ in range(30):
        with calls.tls(registrar).wrap_socket(
                socket.create_connection(("127.0.0.1", registrar.port), timeout=10),
                server_hostname="127.0.0.1") as s:
            s.sendall(b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 1000\r\n\r\n{\"csr\": ")
    assert calls.healthy(registrar)
    log = registrar.log_text()
    assert "ERROR" not in log and "Traceback" not in log, log[-2000:]


def test_internal_errors_are_counted_and_logged_once_per_cause(
        registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web")
    registrar.sql("ALTER TABLE tokens RENAME TO tokens_gone")  # a broken database
    with calls.client(registrar) as c:
        for _ in range(20):
            status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
                token, csr_pem(ec_key())))
            assert (status, body["reason"], body["action"]) == (500, "internal", "retry")
        metrics = calls.get(c, "/metrics")[1]
    assert _metric(metrics, 'registrar_requests_total{operation="attest",reason="internal",'
                            'result="rejected"}') == 20
    assert "registrar_tokens_outstanding NaN" in metrics  # the rest of the page still works
    log = registrar.log_text()
    assert log.count("Traceback") == 1
    error = "OperationalError" if registrar.store_kind == "sqlite" else "StoreError"
    assert log.count(f"internal error handling /v1/attest: {error} at ") == 1
