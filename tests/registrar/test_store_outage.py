"""PostgreSQL stopped under a running registrar (``pg_ctl stop -m immediate``: every
connection cut) and started again: while it is down requests get 503
``store_unavailable`` with Retry-After (never a 500), ``/ready`` is false and
``/healthz`` stays true; afterwards the same registrar serves again, the token that
could not be spent during the outage works, and no row is half written."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key


@pytest.fixture
def reg(tmp_path_factory: pytest.TempPathFactory,
        postgres_server: PostgresServer) -> Iterator[RegistrarProcess]:
    base = tmp_path_factory.mktemp("outage")
    reg = RegistrarProcess(base, groups={"web": ("prod", "web-vm", 600)},
                           store={"type": "postgres", "dsn": postgres_server.new_database()})
    try:
        reg.start()
        yield reg
    finally:
        reg.kill()
        postgres_server.start_if_stopped()


def _wait_ready(reg: RegistrarProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with calls.client(reg) as c:
            if c.get("/ready").status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("registrar not ready after the database came back:\n"
                         + reg.log_text()[-3000:])


def test_a_database_outage_is_503_with_retry_after_and_nothing_is_lost(
        reg: RegistrarProcess, postgres_server: PostgresServer) -> None:
    before = reg.create_token("web")
    during = reg.create_token("web")
    with calls.client(reg) as c:
        assert calls.post(c, "/v1/attest", json=calls.attest_body(
            before, csr_pem(ec_key()), hostname="vm-0"))[0] == 200
    postgres_server.stop_immediate()
    with calls.client(reg) as c:
        for path in ("/v1/attest", "/v1/attest", "/ready"):
            if path == "/ready":
                response = c.get(path)
            else:
                response = c.post(path, json=calls.attest_body(during, csr_pem(ec_key()),
                                                               hostname="vm-1"))
            body = calls.spec.check(response)
            assert (response.status_code, body["reason"], body["action"]) == (
                503, "store_unavailable", "retry"), (path, body)
            assert int(response.headers["Retry-After"]) >= 1
        assert calls.get(c, "/healthz") == (200, {"status": "ok", "store": "postgres"})
    postgres_server.start()
    _wait_ready(reg)
    with calls.client(reg) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            during, csr_pem(ec_key()), hostname="vm-1"))
        assert status == 200, body
    log = reg.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    # Every workload has exactly the certificate it was answered with; both tokens spent.
    rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
    assert sorted(r["hostname"] for r in rows) == ["vm-0", "vm-1"]
    assert reg.sql("SELECT count(*) FROM certs") == [(2,)]
    assert reg.sql("SELECT count(*) FROM workloads w WHERE NOT EXISTS (SELECT 1 FROM certs"
                   " c WHERE c.serial = w.current_serial)") == [(0,)]
    assert [t["state"] for t in json.loads(reg.cli("token", "list", "--json").stdout)] == [
        "spent", "spent"]
