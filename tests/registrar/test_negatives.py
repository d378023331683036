"""Every refusal has its own reason, is a spec Error body, and leaves the server healthy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import bad_signature_pem, csr_pem, ec_key, rsa_1024_pem

Case = Callable[[RegistrarProcess], dict[str, Any]]


def _json(body: dict[str, Any]) -> dict[str, Any]:
    return {"json": body}


def _with_token(make_csr: Callable[[], str]) -> Case:
    return lambda reg: _json(calls.attest_body(reg.create_token("web", "10m"), make_csr()))


def _expired(reg: RegistrarProcess) -> dict[str, Any]:
    token = reg.create_token("web", "1s")
    time.sleep(1.2)
    return _json(calls.attest_body(token, csr_pem(ec_key())))


def _revoked(reg: RegistrarProcess) -> dict[str, Any]:
    token = reg.create_token("web", "10m")
    token_id = reg.cli("token", "list", "--json").stdout.split('"id": "')[-1].split('"')[0]
    reg.cli("token", "revoke", token_id)
    return _json(calls.attest_body(token, csr_pem(ec_key())))


CASES: dict[str, tuple[Case, int, str]] = {
    "csr_for_another_identity": (_with_token(lambda: csr_pem(
        ec_key(), uris=("spiffe://example.org/ns/kube-system/sa/istiod",))),
        400, "csr_identity_mismatch"),
    "csr_ca_true": (_with_token(lambda: csr_pem(ec_key(), ca=True)), 400, "csr_ca_requested"),
    "csr_rsa_1024": (_with_token(rsa_1024_pem), 400, "csr_key_unsupported"),
    "csr_bad_signature": (_with_token(lambda: bad_signature_pem(ec_key())), 400,
                          "csr_signature_invalid"),
    "csr_garbage": (_with_token(lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"),
                    400, "csr_invalid"),
    "oversized_body": (lambda reg: {"content": b"{" + b" " * 70_000 + b"}",
                                    "headers": {"content-type": "application/json"}},
                       413, "body_too_large"),
    "oversized_chunked_body": (lambda reg: {
        "content": iter([b"{\"csr\": \"" + b"A" * 40_000, b"A" * 40_000 + b"\"}"]),
        "headers": {"content-type": "application/json"}}, 413, "body_too_large"),
    "garbage_json": (lambda reg: {"content": b"{not json", "headers": {
        "content-type": "application/json"}}, 400, "bad_request"),
    "json_not_object": (lambda reg: _json([1, 2, 3]), 400, "bad_request"),  # type: ignore[dict-item]
    "deep_json": (lambda reg: {"content": b"[" * 5000 + b"]" * 5000, "headers": {
        "content-type": "application/json"}}, 400, "bad_request"),
    "wrong_content_type": (lambda reg: {"content": b"token=x", "headers": {
        "content-type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"),
    "unknown_field": (lambda reg: _json({**calls.attest_body("x", "y"), "spiffe_id": "z"}),
                      400, "bad_request"),
    "unknown_evidence_type": (lambda reg: _json({"evidence": {"type": "tpm"}, "csr": csr_pem(
        ec_key())}), 400, "unsupported_evidence"),
    "unknown_token": (lambda reg: _json(calls.attest_body("A" * 43, csr_pem(ec_key()))),
                      401, "token_invalid"),
    "expired_token": (_expired, 401, "token_expired"),
    "revoked_token": (_revoked, 401, "token_revoked"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_attest_refusal(registrar: RegistrarProcess, name: str) -> None:
    make, status, reason = CASES[name]
    with calls.client(registrar) as c:
        got, body = calls.post(c, "/v1/attest", **make(registrar))
    assert (got, body["reason"]) == (status, reason), body
    assert calls.healthy(registrar)


def test_token_for_a_group_removed_from_config_is_refused(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(groups={"old": ("default", "old", 60), "new": ("default", "n", 60)})
    token = reg.create_token("old")
    reg.stop()
    reg._groups = {"new": ("default", "n", 60)}
    reg.write_config()
    reg.start()
    with calls.client(reg) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key())))
    assert (status, body["reason"]) == (403, "no_matching_group")


@pytest.mark.parametrize("shape", ["one_huge_header", "too_many_headers", "huge_request_line"])
def test_unparseable_requests_get_a_json_error_that_echoes_nothing(
        registrar: RegistrarProcess, shape: str) -> None:
    token = registrar.create_token("web", "10m")
    headers = {"x-big": token + "a" * 20_000} if shape == "one_huge_header" else (
        {f"x-{i}": token for i in range(200)} if shape == "too_many_headers" else {})
    path = "/v1/attest" + ("?" + token + "a" * 20_000 if shape == "huge_request_line" else "")
    with calls.client(registrar) as c:
        response = c.post(path, headers=headers, json={})
    assert response.status_code == 400
    body = spec.check(response)
    assert (body["reason"], body["action"]) == ("bad_request", "fatal")
    assert set(body) == {"reason", "action", "message"}
    assert token not in response.text and token not in registrar.log_text()
    assert calls.healthy(registrar)


def test_renew_without_client_cert(registrar: RegistrarProcess) -> None:
    with calls.client(registrar) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert (status, body["reason"], body["action"]) == (401, "client_cert_required", "reattest")


def test_unknown_path_is_not_served(registrar: RegistrarProcess) -> None:
    with calls.client(registrar) as c:
        assert c.get("/v1/secret").status_code == 404
