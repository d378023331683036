"""EC2 verifier negative matrix, against pinned test certs laid out like the shipped ones."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from registrar.attestation.aws import SHIPPED_CERTS, AwsConfig, AwsVerifier, load_region_certs
from registrar.attestation.base import Verified
from registrar.attestation.groups import GroupRule, GroupRules
from registrar.rejections import Rejected
from tests.cloud.pkcs7_surgery import assert_cuts_and_flips_refused, truncate_signature
from tests.fakes.clock import FakeClock
from tests.fakes.cloud_pki import AWS_SUBJECT, CloudPki, issue, new_key, sign_pkcs7

NOW = 1_800_000_000.0
RULES = GroupRules((GroupRule("billing", "aws", {"account_id": "123456789012",
                                                  "region": "us-*"}),
                    GroupRule("cn", "aws", {"region": "cn-*"})))


def make(pki: CloudPki, **config: Any) -> AwsVerifier:
    return AwsVerifier(AwsConfig(cert_dir=pki.root / "aws", groups=RULES, **config),
                       clock=FakeClock(NOW))


def evidence(document: bytes, pkcs7: str) -> dict[str, str]:
    return {"type": "aws", "document": base64.b64encode(document).decode(), "pkcs7": pkcs7}


def reason(verifier: AwsVerifier, ev: dict[str, str]) -> str:
    with pytest.raises(Rejected) as caught:
        asyncio.run(verifier.verify(ev, None))
    assert ev["document"] not in caught.value.message
    return caught.value.reason


def doc(**kwargs: Any) -> bytes:
    kwargs.setdefault("pending", NOW - 600)
    return CloudPki.aws_document(**kwargs)


def test_valid_document_verifies(pki: CloudPki):
    d = doc()
    got = asyncio.run(make(pki).verify(evidence(d, pki.aws_pkcs7(d)), None))
    assert got.subject == "aws:123456789012:i-0123456789abcdef0"
    assert got.group == "billing"
    assert got.claims["region"] == "us-east-1"
    d = doc(region="cn-north-1")
    assert asyncio.run(make(pki).verify(
        evidence(d, pki.aws_pkcs7(d, "cn-north-1")), None)).group == "cn"


def test_pkcs7_of_instance_a_with_document_of_b(pki: CloudPki):
    a, b = doc(instance_id="i-aaaaaaaaaaaaaaaaa"), doc(instance_id="i-bbbbbbbbbbbbbbbbb")
    assert reason(make(pki), evidence(b, pki.aws_pkcs7(a))) == "evidence_document_mismatch"
    # Even a single changed byte (whitespace) counts.
    assert reason(make(pki), evidence(a + b" ", pki.aws_pkcs7(a))) == \
        "evidence_document_mismatch"


def test_signed_by_non_aws_key(pki: CloudPki):
    key = new_key()
    cert = issue(AWS_SUBJECT, key)
    d = doc()
    der = sign_pkcs7(d, cert, key, embed=True)
    assert reason(make(pki), evidence(d, base64.b64encode(der).decode())) == \
        "evidence_signature_invalid"


def test_signed_with_another_regions_cert(pki: CloudPki):
    d = doc(region="us-east-1")
    assert reason(make(pki), evidence(d, pki.aws_pkcs7(d, "eu-west-1"))) == \
        "evidence_signer_untrusted"


def test_truncated_signature_and_truncated_der(pki: CloudPki):
    d = doc()
    good = pki.aws_pkcs7(d)
    assert reason(make(pki), evidence(d, truncate_signature(good))) == \
        "evidence_signature_invalid"
    raw = base64.b64decode(good)
    cut = base64.b64encode(raw[: len(raw) - 40]).decode()
    assert reason(make(pki), evidence(d, cut)) == "evidence_invalid"


def test_stale_pending_time(pki: CloudPki):
    d = doc(pending=NOW - 3601)
    assert reason(make(pki, max_instance_age=3600.0), evidence(d, pki.aws_pkcs7(d))) == \
        "evidence_instance_too_old"


def test_account_and_region_allow_lists(pki: CloudPki):
    d = doc()
    ev = evidence(d, pki.aws_pkcs7(d))
    assert reason(make(pki, allowed_accounts=("999999999999",)), ev) == "evidence_not_allowed"
    assert reason(make(pki, allowed_regions=("eu-west-1",)), ev) == "evidence_not_allowed"


def test_trust_on_first_use_and_eviction(pki: CloudPki):
    verifier = make(pki)
    d = doc()
    ev = evidence(d, pki.aws_pkcs7(d))
    first = asyncio.run(verifier.verify(ev, None))
    second = asyncio.run(verifier.verify(ev, None))  # nothing spent until commit
    asyncio.run(verifier.commit(first))
    with pytest.raises(Rejected) as lost:
        asyncio.run(verifier.commit(second))  # the parallel request loses
    assert lost.value.reason == "instance_already_attested"
    assert reason(verifier, ev) == "instance_already_attested"
    verifier.ledger.evict(first.subject)
    asyncio.run(verifier.commit(asyncio.run(verifier.verify(ev, None))))
    assert reason(verifier, ev) == "instance_already_attested"
    always = make(pki, reattest="always")
    for _ in range(2):
        asyncio.run(always.verify(ev, None))


def test_verified_but_no_group(pki: CloudPki):
    d = doc(account_id="210987654321")
    assert reason(make(pki), evidence(d, pki.aws_pkcs7(d))) == "no_matching_group"


def test_shipped_certs_cover_all_partitions_and_pin_real_keys(pki: CloudPki):
    shipped = load_region_certs(SHIPPED_CERTS)
    assert {"us-east-1", "cn-north-1", "us-gov-west-1"} <= set(shipped)
    assert len(shipped) >= 30
    # The us-east-1 RSA-2048 certificate's DER SHA-256, as other projects pin it.
    from cryptography.hazmat.primitives import hashes
    assert shipped["us-east-1"].fingerprint(hashes.SHA256()).hex() == \
        "70923c22dd074172d0e5d27ea1ca865412525fccd8bc2cd0ff40660e275f0b30"
    assert all(c.public_key().key_size == 2048 for c in shipped.values())
    # Without the test override, the real AWS us-east-1 cert is pinned and a test
    # signature must not pass.
    d = doc()
    verifier = AwsVerifier(AwsConfig(groups=RULES), clock=FakeClock(NOW))
    assert reason(verifier, evidence(d, pki.aws_pkcs7(d))) == "evidence_signature_invalid"


def test_ber_indefinite_length_pkcs7_like_openssl_streaming(pki: CloudPki, tmp_path):
    """IMDS-style PKCS#7 is often BER (indefinite lengths, chunked content,
    'MIAGCSqGSIb3DQEHAqCA...'); it must verify, and still be compared byte for byte."""
    import subprocess
    d = doc()
    (tmp_path / "doc").write_bytes(d)
    der = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-nodetach", "-stream", "-outform", "DER",
         "-md", "sha256", "-nocerts", "-signer", str(pki.root / "aws/aws/us-east-1.pem"),
         "-inkey", str(pki.root / "aws/keys/us-east-1.pem"), "-in", str(tmp_path / "doc")],
        capture_output=True, check=True).stdout
    assert der[:2] == b"\x30\x80"  # indefinite length
    ber = base64.encodebytes(der).decode()
    assert asyncio.run(make(pki).verify(evidence(d, ber), None)).group == "billing"
    assert reason(make(pki), evidence(d + b"\n", ber)) == "evidence_document_mismatch"


def test_malformed_input_is_always_a_rejection_never_a_crash(pki: CloudPki):
    """Parse cost before authentication is bounded and every malformed shape maps
    to a reason (a stray exception would be a 500 and a retry storm). A shape is
    accepted only where a flipped byte is unsigned, and then proves nothing new."""
    import os
    d = doc()
    raw = base64.b64decode(pki.aws_pkcs7(d))
    verifier = make(pki, reattest="always")
    genuine = asyncio.run(verifier.verify(evidence(d, pki.aws_pkcs7(d)), None))

    def outcome(shape: bytes) -> Verified | None:
        try:
            return asyncio.run(verifier.verify(evidence(d, base64.b64encode(shape).decode()),
                                               None))
        except Rejected:
            return None

    assert_cuts_and_flips_refused(raw, outcome, genuine, cut_step=37, flip_step=53, mask=0xFF)
    for n in (1, 16, 700):
        assert outcome(os.urandom(n)) is None
    for bad in ({"document": "!!", "pkcs7": "AA=="}, {"pkcs7": "AA=="},
                {"document": "A" * 20000, "pkcs7": "AA=="}, {"document": 3, "pkcs7": []}):
        with pytest.raises(Rejected) as caught:
            asyncio.run(verifier.verify(bad, None))
        assert caught.value.reason == "evidence_invalid"


def test_a_lost_first_use_is_answered_only_for_a_document_that_verifies(
        pki: CloudPki, tmp_path: Any) -> None:
    """``answered`` re-checks the document (everything but the first use) and that the
    instance still maps to the group its first use was recorded in."""
    from registrar.attestation.aws_ledger import InventoryLedger
    from registrar.store.db import connect
    from registrar.store.inventory import Inventory
    from registrar.store.tokens import Receipt
    clock = FakeClock(NOW)
    conn = connect(tmp_path / "registrar.db")
    ledger = InventoryLedger(tmp_path / "registrar.db", clock=clock, conn=conn)

    def verifier(rules: GroupRules = RULES, **config: Any) -> AwsVerifier:
        return AwsVerifier(AwsConfig(cert_dir=pki.root / "aws", groups=rules, **config),
                           clock=clock, ledger=ledger)

    d = doc()
    ev = evidence(d, pki.aws_pkcs7(d))
    first = asyncio.run(verifier().verify(ev, None))
    asyncio.run(verifier().commit(first, Receipt("k" * 64, "a1", "CHAIN")))
    Inventory(conn, clock).record_attestation(
        evidence_type="aws", subject=first.subject, spiffe_id="spiffe://x/billing",
        group="billing", hostname="", addresses=[], serial="a1", not_after=NOW + 600)
    answered = verifier().answered(ev, "k" * 64)
    assert answered is not None
    assert (answered.subject, answered.group, answered.chain_pem) == (
        first.subject, "billing", "CHAIN")
    assert verifier().answered(ev, "0" * 64) is None  # another key
    other = doc(instance_id="i-0ffffffffffffffff")
    assert verifier().answered(dict(ev, document=evidence(other, "")["document"]),
                               "k" * 64) is None  # not the document the PKCS#7 signs
    assert verifier(allowed_regions=("eu-west-1",)).answered(ev, "k" * 64) is None
    moved = GroupRules((GroupRule("payments", "aws", {"account_id": "123456789012"}),))
    assert verifier(moved).answered(ev, "k" * 64) is None  # now another group's
    assert verifier(reattest="always").answered(ev, "k" * 64) is None
