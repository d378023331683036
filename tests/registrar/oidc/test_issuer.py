"""The registrar as an OIDC issuer, over real TLS: discovery, JWKS, tokens only for
the caller's own identity, rotation with overlap, limits, and no token in the log."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.fixtures.registrar import Group, RegistrarProcess, free_port
from tests.registrar import calls
from tests.registrar.test_renew import enrol, mtls

# web certificates outlive a 1 h token (no cap by the certificate); db's do not.
GROUPS = {"web": Group("shop", "web-vm", 7200), "db": Group("data", "db-vm", 120)}


def oidc_registrar(base: Path, **oidc: Any) -> RegistrarProcess:
    port = free_port()
    section = {"issuer": f"https://127.0.0.1:{port}", "audiences": ["istio-ca", "other"],
               **oidc}
    return RegistrarProcess(base, groups=GROUPS, port=port, config={"oidc": section})


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrarProcess]:
    server = oidc_registrar(tmp_path_factory.mktemp("oidc"),
                            rate={"per_second": 1000, "burst": 1000},
                            per_workload={"per_second": 1000, "burst": 1000})
    try:
        server.start()
        yield server
    finally:
        server.kill()


def jwks(reg: RegistrarProcess) -> dict[str, Any]:
    with calls.client(reg) as c:
        response = c.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return dict(response.json())


def verify(reg: RegistrarProcess, token: str, audience: str = "istio-ca") -> dict[str, Any]:
    """Verify as istiod does: a key from the JWKS by kid, RS256, iss, aud, exp."""
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k["kid"]: k for k in jwks(reg)["keys"]}
    if kid not in keys:
        raise jwt.InvalidSignatureError(f"kid {kid} is not in the JWKS")
    key = jwt.PyJWK(keys[kid]).key
    return dict(jwt.decode(token, key, algorithms=["RS256"], audience=audience,
                           issuer=reg.url))


def ask(client: httpx.Client, **body: Any) -> tuple[int, Any]:
    return calls.post(client, "/v1/oidc/token", json=body)


def test_discovery_and_jwks(reg: RegistrarProcess) -> None:
    with calls.client(reg) as c:
        status, doc = calls.get(c, "/.well-known/openid-configuration")
    assert status == 200
    assert doc["issuer"] == reg.url
    assert doc["jwks_uri"] == f"{reg.url}/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = jwks(reg)["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and keys[0]["alg"] == "RS256"


def test_attested_workload_gets_a_token_for_its_own_identity(
        reg: RegistrarProcess, tmp_path: Path) -> None:
    cert, key = enrol(reg, tmp_path / "web")
    with mtls(reg, cert, key) as c:
        status, body = ask(c)
    assert status == 200, body
    claims = verify(reg, body["token"])
    assert claims["sub"] == "system:serviceaccount:shop:web-vm" == body["subject"]
    assert claims["aud"] == ["istio-ca"]  # a list: istiod refuses a bare string
    assert claims["exp"] - claims["iat"] == 600 == body["expires_in"]  # default 10 min
    with mtls(reg, cert, key) as c:
        status, body = ask(c, audience="other", ttl_seconds=3600,
                           subject="system:serviceaccount:shop:web-vm")
    assert status == 200, body
    claims = verify(reg, body["token"], audience="other")
    assert claims["exp"] - claims["iat"] == 3600
    # Never logged: neither the token nor any part of its signature.
    log = reg.log_text()
    assert body["token"] not in log and body["token"].split(".")[2] not in log
    assert "oidc_token ok spiffe_id=spiffe://example.org/ns/shop/sa/web-vm" in log


def test_refusals(reg: RegistrarProcess, tmp_path: Path) -> None:
    with calls.client(reg) as c:  # no client certificate
        status, body = ask(c)
    assert (status, body["reason"]) == (401, "client_cert_required")
    cert, key = enrol(reg, tmp_path / "web")
    with mtls(reg, cert, key) as c:
        for request, expected in (
                ({"subject": "system:serviceaccount:data:db-vm"},
                 (403, "oidc_subject_not_allowed")),
                ({"audience": "kubernetes"}, (400, "oidc_audience_not_allowed")),
                ({"ttl_seconds": 3601}, (400, "bad_request")),
                ({"ttl_seconds": 5}, (400, "bad_request")),
                ({"scope": "x"}, (400, "bad_request"))):
            status, body = ask(c, **request)
            assert (status, body["reason"]) == expected, request
    # An evicted workload's certificate no longer buys tokens.
    leaf_id = [r for r in json.loads(reg.cli("workloads", "list", "--json").stdout)
               if r["spiffe_id"].endswith("/sa/web-vm")][-1]["id"]
    reg.cli("workloads", "evict", str(leaf_id))
    with mtls(reg, cert, key) as c:
        status, body = ask(c)
    assert (status, body["reason"]) == (403, "identity_evicted")


def test_token_never_outlives_the_certificate(reg: RegistrarProcess, tmp_path: Path) -> None:
    from cryptography import x509
    cert, key = enrol(reg, tmp_path / "db", group="db")  # 120 s certificates
    with mtls(reg, cert, key) as c:
        status, body = ask(c, ttl_seconds=3600)
    assert status == 200, body
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    assert verify(reg, body["token"])["exp"] <= leaf.not_valid_after_utc.timestamp()


def test_rotate_keeps_the_old_key_published(reg: RegistrarProcess, tmp_path: Path) -> None:
    cert, key = enrol(reg, tmp_path / "web")
    with mtls(reg, cert, key) as c:
        _, before = ask(c)
    old_kid = jwt.get_unverified_header(before["token"])["kid"]
    out = reg.cli("oidc", "rotate").stdout
    assert "stays published until" in out
    with mtls(reg, cert, key) as c:  # the running server signs with the new key at once
        _, after = ask(c)
    new_kid = jwt.get_unverified_header(after["token"])["kid"]
    assert new_kid != old_kid
    assert {k["kid"] for k in jwks(reg)["keys"]} >= {old_kid, new_kid}
    verify(reg, before["token"])  # tokens of the old key still verify
    verify(reg, after["token"])
    states = {r["kid"]: r["state"] for r in json.loads(
        reg.cli("oidc", "keys", "--json").stdout)}
    assert states[new_kid] == "signing" and states[old_kid] == "published"


def test_key_files_are_private_and_not_the_ca_key(reg: RegistrarProcess) -> None:
    key_dir = reg.state_dir / "oidc"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    pems = list(key_dir.glob("*.pem"))
    assert pems
    for path in [*pems, key_dir / "keys.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca_key = (reg.state_dir / "ca-key.pem").read_bytes()
    assert all(p.read_bytes() != ca_key for p in pems)


def test_token_requests_are_rate_limited(tmp_path: Path) -> None:
    server = oidc_registrar(tmp_path / "r", rate={"per_second": 0.001, "burst": 2})
    with server:
        cert, key = enrol(server, tmp_path / "web")
        with mtls(server, cert, key) as c:
            answers = [ask(c) for _ in range(3)]
    assert [s for s, _ in answers] == [200, 200, 429]
    assert answers[2][1]["reason"] == "rate_limited" and answers[2][1]["retry_after"] >= 1


def test_one_workload_cannot_starve_the_others(tmp_path: Path) -> None:
    server = oidc_registrar(tmp_path / "r", per_workload={"per_second": 0.001, "burst": 2})
    with server:
        busy = enrol(server, tmp_path / "busy")
        quiet = enrol(server, tmp_path / "quiet")
        with mtls(server, *busy) as c:
            answers = [ask(c)[0] for _ in range(3)]
        with mtls(server, *quiet) as c:
            other = ask(c)
    assert answers == [200, 200, 429]
    assert other[0] == 200
    # The log names the reason and our own workload id, never the client's text.
    assert re.search(r"oidc_token rejected reason=rate_limited remote=\S+ workload=\d+$",
                     server.log_text(), re.M), server.log_text()[-2000:]


@pytest.mark.parametrize(("oidc", "key", "allowed"), [
    ({}, "oidc.issuer", "https"),
    ({"issuer": "http://x"}, "oidc.issuer", "https"),
    ({"issuer": "https://x", "token_ttl": "2h"}, "oidc.token_ttl", ""),
    ({"issuer": "https://x", "token_ttl": "30m", "max_token_ttl": "15m"}, "oidc.token_ttl",
     "token_ttl <= max_token_ttl"),
    ({"issuer": "https://x", "audiences": []}, "oidc.audiences", "non-empty"),
    ({"issuer": "https://x", "colour": 1}, "oidc.colour", "issuer"),
])
def test_config_errors_name_the_key(tmp_path: Path, oidc: dict[str, Any], key: str,
                                    allowed: str) -> None:
    server = RegistrarProcess(tmp_path, groups=GROUPS)
    server.init()
    server.write_config(oidc=oidc)
    result = server.cli("oidc", "keys", check=False)
    assert result.returncode == 78, result.stderr
    assert key in result.stderr and allowed in result.stderr
