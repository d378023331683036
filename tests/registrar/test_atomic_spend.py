"""A join token is spent only together with the certificate it pays for.

The failure is real, not mocked: the test plants a trigger in the registrar's
own SQLite database that aborts the certificate's insert (as a full disk or a
damaged table would), then removes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key


def _token_state(reg: RegistrarProcess) -> str:
    rows = json.loads(reg.cli("token", "list", "--json").stdout)
    assert len(rows) == 1
    return str(rows[0]["state"])


PLANT = {
    "sqlite": ["CREATE TRIGGER planted_fault BEFORE INSERT ON certs "
               "BEGIN SELECT RAISE(ABORT, 'planted fault'); END"],
    "postgres": ["CREATE FUNCTION planted() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RAISE EXCEPTION 'planted fault'; END $$",
                 "CREATE TRIGGER planted_fault BEFORE INSERT ON certs "
                 "FOR EACH ROW EXECUTE FUNCTION planted()"],
}
REMOVE = {"sqlite": "DROP TRIGGER planted_fault",
          "postgres": "DROP TRIGGER planted_fault ON certs"}


def test_a_failed_certificate_record_gives_the_token_back(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory()
    token = reg.create_token("default")
    for statement in PLANT[reg.store_kind]:
        reg.sql(statement)
    with calls.client(reg) as c:
        for _ in range(3):  # the retries a 500 asks for, each failing again
            status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
                token, csr_pem(ec_key()), hostname="vm-1"))
            assert (status, body["reason"], body["action"]) == (500, "internal", "retry")
        assert _token_state(reg) == "valid"
        # Nothing half-recorded either: no workload row without its certificate.
        assert json.loads(reg.cli("workloads", "list", "--json").stdout) == []
        reg.sql(REMOVE[reg.store_kind])
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key()), hostname="vm-1"))
        assert status == 200, body
    assert _token_state(reg) == "spent"
    assert [w["hostname"] for w in json.loads(
        reg.cli("workloads", "list", "--json").stdout)] == ["vm-1"]
    assert calls.healthy(reg)
