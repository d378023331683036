"""Azure verifier negative matrix: the verifying cert must be the chained one."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from meshcore.clock import SystemClock
from registrar.attestation.azure import AzureConfig, AzureVerifier
from registrar.attestation.base import Verified
from registrar.attestation.groups import GroupRule, GroupRules
from registrar.rejections import Rejected
from tests.cloud.pkcs7_surgery import assert_cuts_and_flips_refused, relabel
from tests.fakes.clock import FakeClock
from tests.fakes.cloud_pki import CloudPki, _name, issue, new_key, sign_pkcs7

NONCE = "N0nce" * 6 + "ab"
RULES = GroupRules((GroupRule("batch", "azure",
                              {"subscription_id": "8d10da13-8125-4ba9-a717-bf7490507b3d"}),))


def make(pki: CloudPki, now: float | None = None, **config: Any) -> AzureVerifier:
    cfg = AzureConfig(roots=(pki.azure_root,), intermediates=(pki.azure_intermediate,),
                      groups=RULES, **config)
    return AzureVerifier(cfg, clock=SystemClock() if now is None else FakeClock(now))


def reason(verifier: AzureVerifier, document: str, challenge: str | None = NONCE) -> str:
    with pytest.raises(Rejected) as caught:
        asyncio.run(verifier.verify({"type": "azure", "document": document}, challenge))
    assert document not in caught.value.message
    return caught.value.reason


def test_valid_document_verifies(pki: CloudPki):
    got = asyncio.run(make(pki).verify(
        {"document": pki.azure_signature(pki.azure_content(NONCE))}, NONCE))
    assert got.subject == "azure:02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    assert got.group == "batch"


def test_nonce_mismatch(pki: CloudPki):
    doc = pki.azure_signature(pki.azure_content("X" * 32))
    assert reason(make(pki), doc) == "evidence_nonce_mismatch"
    assert reason(make(pki), doc, None) == "challenge_invalid"


def test_signer_named_is_an_unchained_cert(pki: CloudPki):
    """SPIRE's bug: chained cert embedded, signature made by another embedded cert."""
    key = new_key()
    rogue = issue(_name("metadata.azure.com"), key, dns="metadata.azure.com")
    der = sign_pkcs7(pki.azure_content(NONCE), rogue, key, embed=True)
    doc = relabel(base64.b64encode(der).decode(), rogue, [pki.azure_signer, rogue])
    assert reason(make(pki), doc) == "evidence_signer_untrusted"


def test_chained_cert_named_but_other_key_signed(pki: CloudPki):
    key = new_key()
    rogue = issue(_name("metadata.azure.com"), key, dns="metadata.azure.com")
    der = sign_pkcs7(pki.azure_content(NONCE), rogue, key, embed=True)
    doc = relabel(base64.b64encode(der).decode(), pki.azure_signer, [pki.azure_signer, rogue])
    assert reason(make(pki), doc) == "evidence_signature_invalid"


def test_chain_to_other_root_or_wrong_name(pki: CloudPki):
    key = new_key()
    rogue = issue(_name("metadata.azure.com"), key, dns="metadata.azure.com")
    der = sign_pkcs7(pki.azure_content(NONCE), rogue, key, embed=True)
    assert reason(make(pki), base64.b64encode(der).decode()) == "evidence_signer_untrusted"
    assert reason(make(pki, signer_names=("metadata.azure.us",)),
                  pki.azure_signature(pki.azure_content(NONCE))) == "evidence_signer_untrusted"


def test_subscription_allow_list_expiry_and_group(pki: CloudPki):
    doc = pki.azure_signature(pki.azure_content(NONCE))
    assert reason(make(pki, allowed_subscriptions=("other",)), doc) == "evidence_not_allowed"
    import time
    old = pki.azure_signature(pki.azure_content(NONCE, now=time.time() - 30000))
    assert reason(make(pki), old) == "evidence_expired"
    stranger = pki.azure_signature(pki.azure_content(NONCE, subscription_id="another-sub"))
    assert reason(make(pki), stranger) == "no_matching_group"


def test_malformed_input_is_always_a_rejection_never_a_crash(pki: CloudPki):
    """Every cut or flipped shape is a rejection with a reason, not a crash; a flip
    is accepted only outside the signed bytes, and then proves nothing new."""
    raw = base64.b64decode(pki.azure_signature(pki.azure_content(NONCE)))
    verifier = make(pki)
    genuine = asyncio.run(verifier.verify({"document": base64.b64encode(raw).decode()}, NONCE))

    def outcome(shape: bytes) -> Verified | None:
        try:
            return asyncio.run(verifier.verify({"document": base64.b64encode(shape).decode()},
                                               NONCE))
        except Rejected:
            return None

    assert_cuts_and_flips_refused(raw, outcome, genuine, cut_step=61, flip_step=47, mask=0x55)
