"""Every refusal has its own reason, is a spec Error body, and leaves the server healthy."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls, spec
from tests.registrar.csrs import (
    EDI_PARTY_NAME,
    X400_ADDRESS,
    bad_signature_pem,
    csr_pem,
    duplicate_basic_constraints_pem,
    duplicate_san_pem,
    ec_key,
    raw_san_pem,
    rsa_1024_pem,
    unknown_curve_pem,
    unknown_key_algorithm_pem,
    version_2_pem,
)

Case = Callable[[RegistrarProcess], dict[str, Any]]


def _json(body: dict[str, Any]) -> dict[str, Any]:
    return {"json": body}


def _raw_json(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as ASCII JSON: httpx cannot encode a lone surrogate, JSON escapes it."""
    return {"content": json.dumps(body).encode(),
            "headers": {"content-type": "application/json"}}


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
    "csr_unknown_key_algorithm": (_with_token(unknown_key_algorithm_pem), 400,
                                  "csr_key_unsupported"),
    "csr_unknown_curve": (_with_token(unknown_curve_pem), 400, "csr_key_unsupported"),
    "csr_duplicate_san": (_with_token(duplicate_san_pem), 400, "csr_invalid"),
    "csr_duplicate_basic_constraints": (_with_token(duplicate_basic_constraints_pem), 400,
                                        "csr_invalid"),
    "csr_x400_address_san": (_with_token(lambda: raw_san_pem(X400_ADDRESS)), 400,
                             "csr_invalid"),
    "csr_edi_party_name_san": (_with_token(lambda: raw_san_pem(EDI_PARTY_NAME)), 400,
                               "csr_invalid"),
    "csr_version_2": (_with_token(version_2_pem), 400, "csr_invalid"),
    "token_lone_surrogate": (lambda reg: _raw_json(calls.attest_body(
        "\ud800", csr_pem(ec_key()))), 400, "bad_request"),
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


@pytest.mark.parametrize("where", ["attest", "renew"])
def test_lone_surrogate_hostname_is_a_400_and_spends_nothing(
        registrar: RegistrarProcess, tmp_path: Path, where: str) -> None:
    from tests.registrar.test_renew import enrol, mtls
    token, csr = registrar.create_token("web", "10m"), csr_pem(ec_key())
    hostile = {**calls.attest_body(token, csr), "hostname": "vm\ud800"}
    if where == "attest":
        with calls.client(registrar) as c:
            status, body = calls.post(c, "/v1/attest", **_raw_json(hostile))
            assert (status, body["reason"]) == (400, "bad_request"), body
            # The token was not spent: the same request, without the bad hostname, works.
            assert calls.post(c, "/v1/attest", json=calls.attest_body(token, csr))[0] == 200
    else:
        cert, key = enrol(registrar, tmp_path)
        with mtls(registrar, cert, key) as c:
            status, body = calls.post(c, "/v1/renew", **_raw_json(
                {"csr": csr, "hostname": "vm\ud800"}))
            assert (status, body["reason"]) == (400, "bad_request"), body
            assert calls.post(c, "/v1/renew", json={"csr": csr})[0] == 200
    assert "Traceback" not in registrar.log_text()


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


def test_garbage_after_a_good_request_on_one_connection_gets_a_json_error(
        registrar: RegistrarProcess) -> None:
    """On a kept-alive connection, after a normal answer, garbage gets the API's
    Error instead of aiohttp's text page quoting the garbage."""
    token = registrar.create_token("web", "10m")
    with calls.tls(registrar).wrap_socket(
            socket.create_connection(("127.0.0.1", registrar.port), timeout=10),
            server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        health = b'{"status": "ok", "store": "%s"}' % registrar.store_kind.encode()
        assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(health)
        assert b"\r\nServer: mesh-registrar\r\n" in first and b"aiohttp" not in first
        s.sendall(token.encode() + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"reason": "bad_request", "action": "fatal",
                                "message": "request line or headers too large or malformed"}
    assert token.encode() not in received and token not in registrar.log_text()
    assert calls.healthy(registrar)


def _exchange(reg: RegistrarProcess, head: bytes) -> bytes:
    with calls.tls(reg).wrap_socket(
            socket.create_connection(("127.0.0.1", reg.port), timeout=10),
            server_hostname="127.0.0.1") as s:
        s.sendall(head)
        return s.recv(65536)


def test_expect_100_continue_is_refused_for_a_body_over_the_limit(
        registrar: RegistrarProcess) -> None:
    head = b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = _exchange(registrar, head + b"Content-Length: 10000000\r\n"
                       b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:40]
    assert b"100 Continue" not in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["reason"] == "body_too_large"
    # A body within the limit is invited as before.
    assert _exchange(registrar, head + b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
                     ) == b"HTTP/1.1 100 Continue\r\n\r\n"
    odd = _exchange(registrar, head + b"Content-Length: 2\r\nExpect: teapot\r\n\r\n")
    assert odd.startswith(b"HTTP/1.1 400 ") and b"application/json" in odd
    assert calls.healthy(registrar)


def test_renew_without_client_cert(registrar: RegistrarProcess) -> None:
    with calls.client(registrar) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(ec_key())})
    assert (status, body["reason"], body["action"]) == (401, "client_cert_required", "reattest")


@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    ("GET", "/v1/secret", 404, "not_found"),
    ("POST", "/", 404, "not_found"),
    ("GET", "/v1/attest", 405, "method_not_allowed"),
    ("DELETE", "/v1/bundle", 405, "method_not_allowed"),
])
def test_unknown_paths_and_methods_get_a_json_error(
        registrar: RegistrarProcess, method: str, path: str, status: int, reason: str) -> None:
    with calls.client(registrar) as c:
        response = c.request(method, path)
    assert response.status_code == status
    assert response.headers["server"] == "mesh-registrar"  # no versions
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"reason": reason, "action": "fatal",
                               "message": response.json()["message"]}
    spec.check_error_body(response.json())
