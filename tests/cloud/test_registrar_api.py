"""Cloud evidence through a real registrar over real TLS: reason codes reach the
wire (checked against the OpenAPI file), challenges are single use, EC2 first
use is decided by the inventory and reopened by ``workloads evict``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cloud.test_e2e import evidence_options
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar.calls import client, post
from tests.registrar.csrs import csr_pem, ec_key


@pytest.fixture
def reg(pki: CloudPki, registrar_factory: Any) -> Iterator[RegistrarProcess]:
    with serving(FakeGce(pki).app()) as google:
        jwks = google + "/oauth2/v3/certs"
        yield registrar_factory(groups={"web": ("prod", "web-vm", 600)}, config={"evidence": {
            "join_token": {}, **{c: evidence_options(c, pki, jwks)
                                 for c in ("gce", "aws", "azure")}}})


def challenge(c: httpx.Client) -> str:
    status, body = post(c, "/v1/challenge", json={})
    assert status == 200, body
    nonce = body["nonce"]
    assert isinstance(nonce, str)
    return nonce


def attest(c: httpx.Client, evidence: dict[str, str], nonce: str | None) -> tuple[int, Any]:
    body: dict[str, Any] = {"evidence": evidence, "csr": csr_pem(ec_key())}
    if nonce is not None:
        body["challenge"] = nonce
    return post(c, "/v1/attest", json=body)


def test_gce_challenge_is_single_use_and_binds_the_token(pki: CloudPki, reg: RegistrarProcess):
    with client(reg) as c:
        nonce = challenge(c)
        token = {"type": "gce", "token": pki.gce_token(nonce)}
        status, body = attest(c, token, nonce)
        assert status == 200, body
        assert body["spiffe_id"] == "spiffe://example.org/ns/prod/sa/web-vm"
        status, body = attest(c, token, nonce)  # the same challenge twice
        assert (status, body["reason"]) == (401, "challenge_invalid")
        status, body = attest(c, token, challenge(c))  # replayed token, fresh challenge
        assert (status, body["reason"]) == (401, "evidence_audience_invalid")
        nonce = challenge(c)
        forged = pki.gce_token(nonce, project_id="stranger")
        status, body = attest(c, {"type": "gce", "token": forged}, nonce)
        assert (status, body["reason"]) == (403, "no_matching_group")
    assert pki.gce_token("x")[:20] not in reg.log_text()


def test_aws_first_use_then_evict(pki: CloudPki, reg: RegistrarProcess):
    doc = pki.aws_document(instance_id="i-0feedfacefeedface")
    evidence = {"type": "aws", "document": base64.b64encode(doc).decode(),
                "pkcs7": pki.aws_pkcs7(doc)}
    with client(reg) as c:
        assert attest(c, evidence, None)[0] == 200
        status, body = attest(c, evidence, None)
        assert (status, body["reason"]) == (403, "instance_already_attested")
        assert body["action"] == "fatal"
        rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
        [row] = [r for r in rows if r["subject"].endswith("i-0feedfacefeedface")]
        reg.cli("workloads", "evict", str(row["id"]))
        assert attest(c, evidence, None)[0] == 200
        assert attest(c, evidence, None)[1]["reason"] == "instance_already_attested"
        other = pki.aws_document(instance_id="i-0badbadbadbadbad0")
        mismatch = dict(evidence, document=base64.b64encode(other).decode())
        status, body = attest(c, mismatch, None)
        assert (status, body["reason"]) == (401, "evidence_document_mismatch")
    assert evidence["document"] not in reg.log_text()
    assert evidence["pkcs7"][:80] not in reg.log_text()


def test_azure_nonce_must_be_the_challenge(pki: CloudPki, reg: RegistrarProcess):
    with client(reg) as c:
        nonce = challenge(c)
        document = pki.azure_signature(pki.azure_content(nonce))
        status, body = attest(c, {"type": "azure", "document": document}, challenge(c))
        assert (status, body["reason"]) == (401, "evidence_nonce_mismatch")
        assert body["action"] == "retry"
        status, body = attest(c, {"type": "azure", "document": document}, nonce)
        assert status == 200, body
    assert document[:80] not in reg.log_text()


def test_aws_first_use_is_given_back_when_the_certificate_cannot_be_recorded(
        pki: CloudPki, reg: RegistrarProcess):
    """The claim and the record are one transaction (a planted trigger makes the
    record fail, as a full disk would): the retry the 500 asks for can still attest."""
    import sqlite3

    def sql(statement: str) -> None:
        conn = sqlite3.connect(reg.state_dir / "registrar.db", timeout=30)
        conn.execute(statement)
        conn.commit()
        conn.close()

    doc = pki.aws_document(instance_id="i-0aaaabbbbccccdddd")
    evidence = {"type": "aws", "document": base64.b64encode(doc).decode(),
                "pkcs7": pki.aws_pkcs7(doc)}
    sql("CREATE TRIGGER planted_fault BEFORE INSERT ON certs "
        "BEGIN SELECT RAISE(ABORT, 'planted fault'); END")
    with client(reg) as c:
        for _ in range(2):
            status, body = attest(c, evidence, None)
            assert (status, body["reason"]) == (500, "internal"), body
        sql("DROP TRIGGER planted_fault")
        assert attest(c, evidence, None)[0] == 200
        assert attest(c, evidence, None)[1]["reason"] == "instance_already_attested"
