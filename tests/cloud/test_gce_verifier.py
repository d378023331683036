"""GCE verifier negative matrix: every way a token must fail, each with its reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from registrar.attestation.gce import GceConfig, GceVerifier
from registrar.attestation.groups import GroupRule, GroupRules
from registrar.attestation.jwks import JwksCache
from registrar.rejections import Rejected
from tests.fakes.clock import FakeClock
from tests.fakes.cloud_pki import CloudPki, new_key
from tests.fakes.gce_metadata import FakeGce

NOW = 1_800_000_000.0
CHALLENGE = "A" * 32
RULES = GroupRules((GroupRule("web", "gce", {"project_id": "mesh-test",
                                              "service_account": "vm@*"}),))


def make(url: str, **config: Any) -> tuple[GceVerifier, JwksCache]:
    keys = JwksCache(url + "/oauth2/v3/certs", clock=FakeClock(), min_refresh_interval=30)
    return GceVerifier(GceConfig(groups=RULES, **config), keys=keys, clock=FakeClock(NOW)), keys


def reason(verifier: GceVerifier, token: str, challenge: str | None = CHALLENGE) -> str:
    with pytest.raises(Rejected) as caught:
        asyncio.run(verifier.verify({"type": "gce", "token": token}, challenge))
    assert token not in caught.value.message
    return caught.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def test_valid_token_verifies_to_instance_and_group(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    got = asyncio.run(verifier.verify(
        {"type": "gce", "token": pki.gce_token(CHALLENGE, now=NOW)}, CHALLENGE))
    assert got.subject == "gce:4242424242424242"
    assert got.group == "web"
    assert got.claims["project_id"] == "mesh-test"
    assert got.claims["service_account"] == "vm@mesh-test.iam.gserviceaccount.com"


def test_alg_none_rejected(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    token = unsigned({"alg": "none", "kid": "fake-google-kid-1"},
                     pki.gce_claims(CHALLENGE, now=NOW)) + "."
    assert reason(verifier, token) == "evidence_algorithm_invalid"


def test_hs256_signed_with_public_key_rejected(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    public = pki.gce_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = unsigned({"alg": "HS256", "kid": "fake-google-kid-1"},
                             pki.gce_claims(CHALLENGE, now=NOW))
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    assert reason(verifier, f"{signing_input}.{b64(mac)}") == "evidence_algorithm_invalid"


@pytest.mark.parametrize(("change", "expected"), [
    ({"iss": "https://evil.example"}, "evidence_issuer_invalid"),
    ({"iss": None}, "evidence_issuer_invalid"),
    ({"aud": "B" * 32}, "evidence_audience_invalid"),
    ({"aud": None}, "evidence_audience_invalid"),
    ({"aud": [CHALLENGE, "other"]}, "evidence_audience_invalid"),
    ({"exp": int(NOW) - 61, "iat": int(NOW) - 3000}, "evidence_expired"),
    ({"iat": int(NOW) + 61, "exp": int(NOW) + 3000}, "evidence_invalid"),
    ({"nbf": int(NOW) + 120}, "evidence_invalid"),
    ({"nbf": "soon"}, "evidence_invalid"),
    ({"exp": None}, "evidence_invalid"),
    ({"exp": int(NOW) + 7 * 86400}, "evidence_invalid"),
    ({"google": None}, "evidence_invalid"),
])
def test_claim_matrix(pki: CloudPki, fake_gce: tuple[FakeGce, str], change: dict[str, Any],
                      expected: str):
    verifier, _ = make(fake_gce[1])
    claims = pki.gce_claims(CHALLENGE, now=NOW)
    for key, value in change.items():
        if value is None:
            claims.pop(key)
        else:
            claims[key] = value
    assert reason(verifier, pki.gce_token(CHALLENGE, claims=claims)) == expected


def test_leeway_accepts_up_to_60_seconds(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    claims = pki.gce_claims(CHALLENGE, now=NOW - 3600 - 59)  # expired 59 s ago
    asyncio.run(verifier.verify({"token": pki.gce_token(CHALLENGE, claims=claims)}, CHALLENGE))
    with pytest.raises(ValueError):
        GceConfig(leeway=61)


def test_replayed_token_rejected(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    token = pki.gce_token(CHALLENGE, now=NOW)
    asyncio.run(verifier.verify({"token": token}, CHALLENGE))
    assert reason(verifier, token) == "evidence_replayed"


def test_missing_challenge_rejected(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    assert reason(verifier, pki.gce_token(CHALLENGE, now=NOW), None) == "challenge_invalid"


def test_forged_signature_rejected(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    import jwt
    verifier, _ = make(fake_gce[1])
    forged = jwt.encode(pki.gce_claims(CHALLENGE, now=NOW), new_key(), algorithm="RS256",
                        headers={"kid": "fake-google-kid-1"})
    assert reason(verifier, forged) == "evidence_signature_invalid"


def test_unknown_kid_refreshes_at_most_once(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    fake, url = fake_gce
    verifier, keys = make(url)
    tokens = [pki.gce_token(CHALLENGE, now=NOW, kid=f"unknown-{i}") for i in range(20)]

    async def all_of_them() -> list[BaseException | Any]:
        return await asyncio.gather(*(verifier.verify({"token": t}, CHALLENGE) for t in tokens),
                                    return_exceptions=True)

    results = asyncio.run(all_of_them())
    assert all(isinstance(r, Rejected) and r.reason == "evidence_key_unknown" for r in results)
    # First use loads the set once; the unknown kids share one rate-limited refresh window.
    assert fake.jwks_calls == 1
    assert keys.fetches == 1


def test_instance_age_and_project_allow_list(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1], max_instance_age=300.0)
    old = pki.gce_token(CHALLENGE, now=NOW, created=NOW - 301)
    assert reason(verifier, old) == "evidence_instance_too_old"
    verifier, _ = make(fake_gce[1], allowed_projects=("other-project",))
    assert reason(verifier, pki.gce_token(CHALLENGE, now=NOW)) == "evidence_not_allowed"


def test_verified_but_no_group(pki: CloudPki, fake_gce: tuple[FakeGce, str]):
    verifier, _ = make(fake_gce[1])
    token = pki.gce_token(CHALLENGE, now=NOW, project_id="someone-else")
    assert reason(verifier, token) == "no_matching_group"
