"""Istio's CA API on the registrar, over real TLS from a real gRPC client (grpcio):
a JWT this registrar issued or a current mesh certificate gets a certificate for
the caller's own identity, in Istio's chain layout; every other request is
refused with a gRPC status and a machine-readable reason; tokens never logged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.fixtures.registrar import Group, RegistrarProcess, free_port
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem, rsa_1024_pem
from tests.registrar.istio_ca.client import Answer, create
from tests.registrar.test_renew import enrol, mtls

GROUPS = {"web": Group("shop", "web-vm", 7200), "db": Group("data", "db-vm", 120)}
WEB = "spiffe://example.org/ns/shop/sa/web-vm"
DB = "spiffe://example.org/ns/data/sa/db-vm"


def ca_registrar(base: Path, **istio_ca: Any) -> tuple[RegistrarProcess, str]:
    port, ca_port = free_port(), free_port()
    config = {"oidc": {"issuer": f"https://127.0.0.1:{port}",
                       "audiences": ["istio-ca", "other"],
                       "per_workload": {"per_second": 1000, "burst": 1000}},
              "istio_ca": {"listen": f"127.0.0.1:{ca_port}", **istio_ca}}
    return (RegistrarProcess(base, groups=GROUPS, port=port, config=config),
            f"127.0.0.1:{ca_port}")


class Ca:
    def __init__(self, reg: RegistrarProcess, target: str) -> None:
        self.reg = reg
        self.target = target
        self.roots = reg.ca_file.read_bytes()

    def call(self, csr: str, **kwargs: Any) -> Answer:
        return create(self.target, self.roots, csr, **kwargs)

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(csr_pem(ec_key()), timeout=5).code != grpc.StatusCode.UNAVAILABLE:
                return
            time.sleep(0.2)
        raise AssertionError("the CA API never answered:\n" + self.reg.log_text()[-3000:])

    def token(self, where: Path, group: str = "web", **body: Any) -> str:
        cert, key = enrol(self.reg, where, group)
        with mtls(self.reg, cert, key) as c:
            status, answer = calls.post(c, "/v1/oidc/token", json=body)
        assert status == 200, answer
        return str(answer["token"])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ca]:
    reg, target = ca_registrar(tmp_path_factory.mktemp("istio-ca"))
    try:
        reg.start()
        made = Ca(reg, target)
        made.wait_serving()
        yield made
    finally:
        reg.kill()


def leaf_of(answer: Answer) -> x509.Certificate:
    assert answer.ok, (answer.code, answer.details)
    return x509.load_pem_x509_certificate(answer.chain[0].encode())


def uris(cert: x509.Certificate) -> list[str]:
    return list(cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier))


def test_a_registrar_jwt_gets_a_certificate_in_istios_layout(ca: Ca, tmp_path: Path) -> None:
    token = ca.token(tmp_path / "web")
    key = ec_key()
    answer = ca.call(csr_pem(key, uris=(WEB,)), token=token, validity=600)
    leaf = leaf_of(answer)
    assert uris(leaf) == [WEB]
    assert leaf.public_key() == key.public_key()
    # Leaf first, each element one PEM ending in a newline, the bundle last.
    assert all(p.endswith("\n") and p.count("BEGIN CERTIFICATE") == 1 for p in answer.chain[:-1])
    assert answer.chain[-1] == ca.reg.ca_file.read_text()
    intermediate = x509.load_pem_x509_certificate(answer.chain[1].encode())
    assert leaf.issuer == intermediate.subject
    ca_cert = x509.load_pem_x509_certificate((ca.reg.state_dir / "ca-cert.pem").read_bytes())
    assert intermediate == ca_cert  # signed by the registrar's own CA
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 600 <= lifetime.total_seconds() <= 600 + 11  # asked 600 s (+ backdate)
    # Asked for more than the group's cert_ttl (2 h): capped to it.
    long = leaf_of(ca.call(csr_pem(ec_key(), uris=(WEB,)), token=token, validity=10**6))
    assert (long.not_valid_after_utc - long.not_valid_before_utc).total_seconds() <= 7200 + 11
    log = ca.reg.log_text()
    assert token not in log and token.split(".")[2] not in log
    assert f"istio_ca ok spiffe_id={WEB} by=jwt" in log


def test_a_current_mesh_certificate_renews_and_so_does_the_one_it_got(
        ca: Ca, tmp_path: Path) -> None:
    cert, key = enrol(ca.reg, tmp_path / "web")
    new_key = ec_key()
    answer = ca.call(csr_pem(new_key), cert=cert.read_bytes(), key=key.read_bytes())
    assert uris(leaf_of(answer)) == [WEB]
    # The certificate this API issued (not in the inventory) renews too, as with istiod.
    chain = "".join(answer.chain[:-1]).encode()
    again = ca.call(csr_pem(ec_key()), cert=chain, key=key_pem(new_key))
    assert uris(leaf_of(again)) == [WEB]
    assert f"istio_ca ok spiffe_id={WEB} by=cert" in ca.reg.log_text()


def own_key_token(ca: Ca, **claims: Any) -> str:
    """A token signed with the registrar's own current key (read from its key dir)."""
    key_dir = ca.reg.state_dir / "oidc"
    import json
    index = json.loads((key_dir / "keys.json").read_text())
    kid = next(k["kid"] for k in index["keys"] if k["retired_at"] is None)
    private = serialization.load_pem_private_key((key_dir / f"{kid}.pem").read_bytes(), None)
    now = int(time.time())
    body = {"iss": ca.reg.url, "sub": "system:serviceaccount:shop:web-vm", "aud": ["istio-ca"],
            "iat": now, "nbf": now, "exp": now + 600, **claims}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]


def test_refusals_carry_a_status_and_a_reason(ca: Ca, tmp_path: Path) -> None:
    token = ca.token(tmp_path / "web")
    good = csr_pem(ec_key(), uris=(WEB,))
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    foreign = jwt.encode({"iss": ca.reg.url, "sub": "system:serviceaccount:shop:web-vm",
                          "aud": ["istio-ca"], "iat": now, "exp": now + 600}, foreign_key,
                         algorithm="RS256", headers={"kid": "not-ours"})
    U, P, A = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.INVALID_ARGUMENT)
    cases: dict[str, tuple[Answer, grpc.StatusCode, str]] = {
        "no credentials": (ca.call(good), U, "unauthenticated"),
        "not bearer": (ca.call(good, authorization=f"Basic {token}"), U, "token_invalid"),
        "expired JWT": (ca.call(good, token=own_key_token(ca, iat=now - 900, nbf=now - 900,
                                                           exp=now - 300)),
                        U, "token_expired"),
        "foreign JWT": (ca.call(good, token=foreign), U, "token_key_unknown"),
        "wrong audience": (ca.call(good, token=ca.token(tmp_path / "o", audience="other")),
                           U, "token_audience_invalid"),
        "wrong issuer": (ca.call(good, token=own_key_token(ca, iss="https://elsewhere")),
                         U, "token_issuer_invalid"),
        "unknown subject": (ca.call(good, token=own_key_token(
            ca, sub="system:serviceaccount:shop:nobody")), P, "identity_unknown"),
        "wrong identity in CSR": (ca.call(csr_pem(ec_key(), uris=(DB,)), token=token),
                                  P, "csr_identity_mismatch"),
        "CA bits": (ca.call(csr_pem(ec_key(), uris=(WEB,), ca=True), token=token),
                    A, "csr_ca_requested"),
        "RSA-1024": (ca.call(rsa_1024_pem(), token=token), A, "csr_key_unsupported"),
        "Ed25519": (ca.call(csr_pem(ed25519.Ed25519PrivateKey.generate()), token=token),
                    A, "csr_key_unsupported"),
        "impersonation": (ca.call(good, token=token, metadata={"ImpersonatedIdentity": DB}),
                          U, "impersonation_refused"),
    }
    for name, (answer, code, reason) in cases.items():
        assert (answer.code, answer.reason) == (code, reason), (name, answer)
        assert answer.details.startswith(f"{reason}: "), (name, answer.details)
    log = ca.reg.log_text()
    for secret in (token, foreign):
        assert secret.split(".")[2] not in log
    assert "istio_ca refused reason=token_expired" in log


def test_a_revoked_workloads_certificate_is_refused(ca: Ca, tmp_path: Path) -> None:
    from tests.registrar.test_renew import workload_id
    cert, key = enrol(ca.reg, tmp_path / "web")
    ca.reg.cli("workloads", "revoke", str(workload_id(ca.reg, cert)))
    answer = ca.call(csr_pem(ec_key()), cert=cert.read_bytes(), key=key.read_bytes())
    assert (answer.code, answer.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                            "identity_revoked"), answer


def test_rate_limited(tmp_path: Path) -> None:
    reg, target = ca_registrar(tmp_path, rate={"per_second": 0.01, "burst": 3})
    try:
        reg.start()
        ca = Ca(reg, target)
        answers = [ca.call(csr_pem(ec_key()), timeout=30) for _ in range(6)]
    finally:
        reg.kill()
    # The first calls pass the limit (and are refused for having no credentials).
    reasons = [a.reason for a in answers if a.code != grpc.StatusCode.UNAVAILABLE]
    assert "unauthenticated" in reasons and reasons[-1] == "rate_limited", answers
    assert answers[-1].code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_signs_with_the_new_intermediate_after_a_rotation_without_a_restart(
        tmp_path: Path) -> None:
    reg, target = ca_registrar(tmp_path / "reg")
    try:
        reg.start()
        ca = Ca(reg, target)
        ca.wait_serving()
        cert, key = enrol(reg, tmp_path / "web")

        def intermediate() -> str:
            answer = ca.call(csr_pem(ec_key()), cert=cert.read_bytes(), key=key.read_bytes())
            assert answer.ok, answer
            return x509.load_pem_x509_certificate(
                answer.chain[1].encode()).subject.rfc4514_string()

        before = intermediate()
        reg.cli("ca", "rotate", "--intermediate-only")
        deadline = time.monotonic() + 30
        after = before
        while after == before and time.monotonic() < deadline:
            time.sleep(0.5)
            after = intermediate()
        assert after != before and "intermediate v2" in after, (before, after)
    finally:
        reg.kill()
