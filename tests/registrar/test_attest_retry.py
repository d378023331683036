"""A join-token attest retried after its answer was lost: the same token with a CSR
for the same key gets the certificate that token already paid for, and nothing
else; any other key meets the spent token. Real registrar over real TLS, both
stores (tests/registrar/conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem
from tests.registrar.test_renew import mtls

SPIFFE_WEB = "spiffe://example.org/ns/default/sa/web-vm"


def attest(reg: RegistrarProcess, token: str, csr: str) -> tuple[int, Any]:
    with calls.client(reg) as c:
        return calls.post(c, "/v1/attest", json=calls.attest_body(token, csr, hostname="vm-r"))


def serial_of(body: dict[str, Any]) -> str:
    leaf = x509.load_pem_x509_certificate(body["cert_chain"].encode())
    return format(leaf.serial_number, "x")


def token_id(reg: RegistrarProcess, token: str) -> str:
    from registrar.store.tokens import token_hash
    rows = reg.sql("SELECT id FROM tokens WHERE hash = ?", (token_hash(token),))
    assert len(rows) == 1
    return str(rows[0][0])


def workload_rows(reg: RegistrarProcess, evidence_type: str,
                  subject: str) -> tuple[list[Any], list[Any]]:
    """The subject's workloads (id, state) and every certificate recorded for them."""
    workloads = reg.sql("SELECT id, state FROM workloads WHERE evidence_type = ?"
                        " AND subject = ?", (evidence_type, subject))
    certs = reg.sql("SELECT c.serial FROM certs c JOIN workloads w ON w.id = c.workload_id"
                    " WHERE w.evidence_type = ? AND w.subject = ?", (evidence_type, subject))
    return [tuple(w) for w in workloads], [c[0] for c in certs]


def rows_of(reg: RegistrarProcess, token: str) -> tuple[list[Any], list[Any]]:
    """The token's workloads (id, state) and every certificate recorded for them."""
    return workload_rows(reg, "join_token", token_id(reg, token))


def assert_same_answer(again: dict[str, Any], first: dict[str, Any], spiffe_id: str) -> None:
    """A retry's answer is the first answer: the same chain, identity, times, bundle."""
    assert again["cert_chain"] == first["cert_chain"]
    assert again["spiffe_id"] == first["spiffe_id"] == spiffe_id
    assert (again["not_after"], again["renew_after"]) == (first["not_after"],
                                                          first["renew_after"])
    assert again["trust_bundle"] == first["trust_bundle"]


def refused(status: int, body: Any, reason: str = "token_spent") -> None:
    assert (status, body.get("reason"), body.get("action")) == (401, reason, "fatal"), body


def test_same_token_same_key_gets_the_same_certificate_and_one_workload(
        registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    status, first = attest(registrar, token, csr_pem(key))
    assert status == 200, first
    # The retry's CSR is another CSR (it asks for the URI) for the same key.
    status, again = attest(registrar, token, csr_pem(key, uris=(SPIFFE_WEB,)))
    assert status == 200, again
    assert_same_answer(again, first, SPIFFE_WEB)
    workloads, certs = rows_of(registrar, token)
    assert len(workloads) == 1 and workloads[0][1] == "active"
    assert certs == [serial_of(first)]
    assert "answered_again=same_key" in registrar.log_text()
    assert token not in registrar.log_text()


def test_parallel_retries_with_one_key_all_get_the_one_certificate(
        registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    csr = csr_pem(key)
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: attest(registrar, token, csr), range(12)))
    assert [s for s, _ in results] == [200] * 12, results
    assert len({b["cert_chain"] for _, b in results}) == 1
    workloads, certs = rows_of(registrar, token)
    assert len(workloads) == 1 and len(certs) == 1


def test_same_token_other_key_is_refused_as_spent(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    status, first = attest(registrar, token, csr_pem(key))
    assert status == 200, first
    refused(*attest(registrar, token, csr_pem(ec_key())))
    # The owner's key still gets its answer: the refusal above was for the key.
    status, again = attest(registrar, token, csr_pem(key))
    assert status == 200 and again["cert_chain"] == first["cert_chain"], again
    assert rows_of(registrar, token)[1] == [serial_of(first)]


def test_revoked_workload_or_token_refuses_the_retry(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    status, _ = attest(registrar, token, csr_pem(key))
    assert status == 200
    [(workload, _)], _ = rows_of(registrar, token)
    registrar.cli("workloads", "revoke", str(workload))
    refused(*attest(registrar, token, csr_pem(key)))

    other = registrar.create_token("web", ttl="10m")
    status, _ = attest(registrar, other, csr_pem(key))
    assert status == 200
    registrar.cli("token", "revoke", token_id(registrar, other))
    refused(*attest(registrar, other, csr_pem(key)), reason="token_revoked")


def test_a_renewal_ends_the_window(registrar: RegistrarProcess, tmp_path: Path) -> None:
    """Once the certificate renewed, its answer was received: a retry is not a lost
    answer any more, and must not hand the old certificate out again."""
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    status, body = attest(registrar, token, csr_pem(key))
    assert status == 200
    (tmp_path / "chain.pem").write_text(body["cert_chain"])
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    with mtls(registrar, tmp_path / "chain.pem", tmp_path / "key.pem") as c:
        status, renewed = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert status == 200, renewed
    refused(*attest(registrar, token, csr_pem(key)))


def test_an_expired_certificate_is_not_answered_again(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(groups={"web": ("default", "web-vm", 3)})
    token = reg.create_token("web", ttl="10m")
    key = ec_key()
    status, body = attest(reg, token, csr_pem(key))
    assert status == 200, body
    not_after = x509.load_pem_x509_certificate(
        body["cert_chain"].encode()).not_valid_after_utc
    while dt.datetime.now(dt.UTC) <= not_after + dt.timedelta(seconds=1):
        time.sleep(0.2)
    refused(*attest(reg, token, csr_pem(key)))
    listed = json.loads(reg.cli("workloads", "list", "--json").stdout)
    assert len(listed) == 1
