"""An EC2 first use retried after its answer was lost: the same identity document
with a CSR for the same key gets the certificate that first use already paid for,
and nothing else; any other key, or a workload revoked, renewed or expired since,
meets ``instance_already_attested`` as before. Real registrar (two workers) over
real TLS, both stores (tests/registrar/conftest.py); the documents are signed by
the test AWS keys the registrar pins (tests/fakes/cloud_pki.py)."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.cloud.test_e2e import evidence_options
from tests.fakes.cloud_pki import CloudPki
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem
from tests.registrar.test_attest_retry import assert_same_answer, serial_of, workload_rows
from tests.registrar.test_renew import mtls

SPIFFE_WEB = "spiffe://example.org/ns/prod/sa/web-vm"
ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CloudPki:
    return CloudPki.create(tmp_path_factory.mktemp("cloud-pki"))


def _config(pki: CloudPki) -> dict[str, Any]:
    return {"evidence": {"aws": evidence_options("aws", pki, "")}}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, module_store: dict[str, Any] | None,
        pki: CloudPki) -> Iterator[RegistrarProcess]:
    """Two workers, so parallel retries race across processes on SQLite too."""
    made = RegistrarProcess(tmp_path_factory.mktemp("registrar"), workers=2,
                            groups={"web": ("prod", "web-vm", 3600)},
                            store=module_store, config=_config(pki))
    try:
        made.start()
        yield made
    finally:
        made.kill()


def evidence(pki: CloudPki, instance: str) -> dict[str, str]:
    doc = pki.aws_document(instance_id=instance)
    return {"type": "aws", "document": base64.b64encode(doc).decode(),
            "pkcs7": pki.aws_pkcs7(doc)}


def attest(reg: RegistrarProcess, ev: dict[str, str], csr: str) -> tuple[int, Any]:
    with calls.client(reg) as c:
        return calls.post(c, "/v1/attest", json={"evidence": ev, "csr": csr,
                                                 "hostname": "vm-e"})


def rows_of(reg: RegistrarProcess, instance: str) -> tuple[list[Any], list[Any]]:
    """The instance's workloads (id, state) and every certificate recorded for them."""
    return workload_rows(reg, "aws", f"aws:{ACCOUNT}:{instance}")


def refused(status: int, body: Any) -> None:
    assert (status, body.get("reason"), body.get("action")) == (
        403, "instance_already_attested", "fatal"), body


def first_use(reg: RegistrarProcess, pki: CloudPki,
              instance: str) -> tuple[dict[str, str], Any, dict[str, Any]]:
    ev, key = evidence(pki, instance), ec_key()
    status, body = attest(reg, ev, csr_pem(key))
    assert status == 200, body
    return ev, key, body


def test_same_document_same_key_gets_the_same_certificate_and_one_workload(
        reg: RegistrarProcess, pki: CloudPki) -> None:
    ev, key, first = first_use(reg, pki, "i-0a00000000000001")
    # The retry's CSR is another CSR (it asks for the URI) for the same key.
    status, again = attest(reg, ev, csr_pem(key, uris=(SPIFFE_WEB,)))
    assert status == 200, again
    assert_same_answer(again, first, SPIFFE_WEB)
    workloads, certs = rows_of(reg, "i-0a00000000000001")
    assert len(workloads) == 1 and workloads[0][1] == "active"
    assert certs == [serial_of(first)]
    assert "answered_again=same_key" in reg.log_text()
    assert ev["document"] not in reg.log_text()


def test_parallel_first_uses_with_one_key_all_get_the_one_certificate(
        reg: RegistrarProcess, pki: CloudPki) -> None:
    ev, csr = evidence(pki, "i-0a00000000000002"), csr_pem(ec_key())
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: attest(reg, ev, csr), range(12)))
    assert [s for s, _ in results] == [200] * 12, results
    assert len({b["cert_chain"] for _, b in results}) == 1
    workloads, certs = rows_of(reg, "i-0a00000000000002")
    assert len(workloads) == 1 and len(certs) == 1


def test_same_document_other_key_is_refused(reg: RegistrarProcess, pki: CloudPki) -> None:
    ev, key, first = first_use(reg, pki, "i-0a00000000000003")
    refused(*attest(reg, ev, csr_pem(ec_key())))
    # The owner's key still gets its answer: the refusal above was for the key.
    status, again = attest(reg, ev, csr_pem(key))
    assert status == 200 and again["cert_chain"] == first["cert_chain"], again
    assert rows_of(reg, "i-0a00000000000003")[1] == [serial_of(first)]


def test_a_revoked_workload_is_not_answered_again(reg: RegistrarProcess,
                                                  pki: CloudPki) -> None:
    ev, key, _ = first_use(reg, pki, "i-0a00000000000004")
    [(workload, _)], _ = rows_of(reg, "i-0a00000000000004")
    reg.cli("workloads", "revoke", str(workload))
    refused(*attest(reg, ev, csr_pem(key)))


def test_a_first_use_without_a_record_is_not_answered_again(
        reg: RegistrarProcess, pki: CloudPki) -> None:
    """As one attested before schema 7: nothing says which key it certified."""
    ev, key, _ = first_use(reg, pki, "i-0a00000000000005")
    reg.sql("UPDATE workloads SET first_use_key = NULL, first_use_serial = NULL,"
            " first_use_chain = NULL WHERE subject = ?", (f"aws:{ACCOUNT}:i-0a00000000000005",))
    refused(*attest(reg, ev, csr_pem(key)))


def test_a_renewal_ends_the_window(reg: RegistrarProcess, pki: CloudPki,
                                   tmp_path: Path) -> None:
    """Once the certificate renewed, its answer was received: a retry is not a lost
    answer any more, and must not hand the old certificate out again."""
    ev, key, body = first_use(reg, pki, "i-0a00000000000006")
    (tmp_path / "chain.pem").write_text(body["cert_chain"])
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    with mtls(reg, tmp_path / "chain.pem", tmp_path / "key.pem") as c:
        status, renewed = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert status == 200, renewed
    refused(*attest(reg, ev, csr_pem(key)))
    assert len(rows_of(reg, "i-0a00000000000006")[1]) == 2


def test_an_expired_certificate_is_not_answered_again(
        registrar_factory: Callable[..., RegistrarProcess], pki: CloudPki) -> None:
    short = registrar_factory(groups={"web": ("prod", "web-vm", 3)}, config=_config(pki))
    ev, key, body = first_use(short, pki, "i-0a00000000000007")
    not_after = x509.load_pem_x509_certificate(
        body["cert_chain"].encode()).not_valid_after_utc
    while dt.datetime.now(dt.UTC) <= not_after + dt.timedelta(seconds=1):
        time.sleep(0.2)
    refused(*attest(short, ev, csr_pem(key)))
    assert len(rows_of(short, "i-0a00000000000007")[1]) == 1


def test_a_group_giving_another_identity_is_not_answered_again(
        registrar_factory: Callable[..., RegistrarProcess], pki: CloudPki) -> None:
    made = registrar_factory(groups={"web": ("prod", "web-vm", 3600)}, config=_config(pki))
    ev, key, _ = first_use(made, pki, "i-0a00000000000008")
    made.stop()
    made.write_config(groups=[{"name": "web", "namespace": "prod",
                               "service_account": "other-vm", "cert_ttl": "3600s"}])
    made.start()
    refused(*attest(made, ev, csr_pem(key)))
