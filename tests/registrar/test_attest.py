"""Join-token attestation over real TLS: the issued certificate and single use."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import httpx
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import csr_pem, ec_key

SPIFFE_WEB = "spiffe://example.org/ns/default/sa/web-vm"


def verify_chain(chain_pem: str, bundle_pem: str) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    roots = x509.load_pem_x509_certificates(bundle_pem.encode())
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verifier.verify(certs[0], certs[1:])
    return certs[0]


def test_attest_issues_spiffe_leaf_that_chains_to_bundle(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    key = ec_key()
    with calls.client(registrar) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(key), hostname="vm-1", addresses=["10.0.0.5"]))
        assert status == 200, body
        _, bundle = calls.get(c, "/v1/bundle")
    assert body["spiffe_id"] == SPIFFE_WEB
    assert body["mesh"] == {"trust_domain": "example.org", "namespace": "default",
                            "service_account": "web-vm", "group": "web",
                            "labels": {"app": "web"}}
    assert bundle["trust_bundle"] == body["trust_bundle"]
    assert body["trust_bundle"] == registrar.ca_file.read_text()
    leaf = verify_chain(body["cert_chain"], body["trust_bundle"])
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(
        x509.UniformResourceIdentifier) == [SPIFFE_WEB]
    assert len(leaf.subject) == 0
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(seconds=20) < leaf.not_valid_before_utc < now - dt.timedelta(
        seconds=5)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(seconds=3600) < lifetime <= dt.timedelta(seconds=3611)
    renew_after = dt.datetime.fromisoformat(body["renew_after"])
    expected = leaf.not_valid_before_utc + lifetime / 2
    assert abs((renew_after - expected).total_seconds()) <= 1
    # The chain stops below the root (the spec: leaf, then intermediates, no root).
    assert body["trust_bundle"].strip() not in body["cert_chain"]

    listed = registrar.cli("workloads", "list", "--json").stdout
    assert '"hostname": "vm-1"' in listed and "10.0.0.5" in listed


def test_fifty_parallel_uses_of_one_token_exactly_one_wins(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    csrs = [csr_pem(ec_key()) for _ in range(50)]

    async def race() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=registrar.url, verify=calls.tls(registrar),
                                     limits=limits, timeout=60) as c:
            return await asyncio.gather(*(
                c.post("/v1/attest", json=calls.attest_body(token, csr)) for csr in csrs))

    responses = asyncio.run(race())
    bodies = [spec.check(r) for r in responses]
    assert sorted(r.status_code for r in responses) == [200] + [401] * 49
    assert {b["reason"] for b in bodies if "reason" in b} == {"token_spent"}
    winner = [r.status_code for r in responses].index(200)
    loser = (winner + 1) % len(csrs)
    with calls.client(registrar) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(token, csrs[loser]))
        assert (status, body["reason"], body["action"]) == (401, "token_spent", "fatal")
        # The winner's key asking again is a lost answer retried: the same certificate.
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(token, csrs[winner]))
    assert status == 200 and body["cert_chain"] == bodies[winner]["cert_chain"]


def test_bad_csr_does_not_burn_the_token(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("web", ttl="10m")
    with calls.client(registrar) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key(), uris=("spiffe://example.org/ns/kube-system/sa/admin",))))
        assert (status, body["reason"]) == (400, "csr_identity_mismatch")
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key(), uris=(SPIFFE_WEB,))))
    assert status == 200 and body["spiffe_id"] == SPIFFE_WEB


def test_challenge_is_32_alphanumerics(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(config={"evidence": {"join_token": {}, "gce": {
        "groups": [{"group": "default", "match": {"project_id": "p"}}]}}})
    with calls.client(reg) as c:
        nonces = {calls.post(c, "/v1/challenge")[1]["nonce"] for _ in range(3)}
    assert len(nonces) == 3 and all(len(n) == 32 and n.isalnum() for n in nonces)


def test_no_challenge_without_an_evidence_type_that_takes_one(
        registrar: RegistrarProcess) -> None:
    """Join tokens only: an unauthenticated caller cannot make the registrar store
    anything."""
    with calls.client(registrar) as c:
        for _ in range(20):
            status, body = calls.post(c, "/v1/challenge")
            assert (status, body["reason"]) == (400, "unsupported_evidence")
    assert registrar.sql("SELECT count(*) FROM challenges") == [(0,)]


def test_token_list_shows_state_never_the_token(registrar: RegistrarProcess) -> None:
    token = registrar.create_token("db", ttl="5m")
    out = registrar.cli("token", "list").stdout
    assert token not in out and " db " in out and "valid" in out
