"""A join token is spent only together with the certificate it pays for.

The failure is real, not mocked: the test plants a trigger in the registrar's
own SQLite database that aborts the certificate's insert (as a full disk or a
damaged table would), then removes it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key


def _token_state(reg: RegistrarProcess) -> str:
    rows = json.loads(reg.cli("token", "list", "--json").stdout)
    assert len(rows) == 1
    return str(rows[0]["state"])


def _sql(reg: RegistrarProcess, statement: str) -> None:
    conn = sqlite3.connect(reg.state_dir / "registrar.db", timeout=30)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def test_a_failed_certificate_record_gives_the_token_back(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory()
    token = reg.create_token("default")
    _sql(reg, "CREATE TRIGGER planted_fault BEFORE INSERT ON certs "
              "BEGIN SELECT RAISE(ABORT, 'planted fault'); END")
    with calls.client(reg) as c:
        for _ in range(3):  # the retries a 500 asks for, each failing again
            status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
                token, csr_pem(ec_key()), hostname="vm-1"))
            assert (status, body["reason"], body["action"]) == (500, "internal", "retry")
        assert _token_state(reg) == "valid"
        # Nothing half-recorded either: no workload row without its certificate.
        assert json.loads(reg.cli("workloads", "list", "--json").stdout) == []
        _sql(reg, "DROP TRIGGER planted_fault")
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key()), hostname="vm-1"))
        assert status == 200, body
    assert _token_state(reg) == "spent"
    assert [w["hostname"] for w in json.loads(
        reg.cli("workloads", "list", "--json").stdout)] == ["vm-1"]
    assert calls.healthy(reg)
