"""The decision layer in-process, with real stores and CA: challenge handling for a
verifier that binds one, and the order of checks (CSR before evidence is spent)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from meshcore.clock import SystemClock
from registrar.api.service import Service
from registrar.attestation.base import Verified
from registrar.ca.authority import load_authority
from registrar.ca.bootstrap import init_state
from registrar.config import build_config
from registrar.rejections import Rejected
from registrar.store.challenges import ChallengeStore
from registrar.store.inventory import Inventory
from registrar.store.tokens import Receipt
from tests.registrar.csrs import csr_pem, ec_key


class NonceVerifier:
    """A platform whose evidence must carry the challenge (like GCE's audience)."""

    evidence_type = "nonce"
    needs_challenge = True

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.commits = 0

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        self.seen.append(challenge)
        if evidence.get("nonce") != challenge:
            raise Rejected("evidence_nonce_mismatch", "nonce differs")
        return Verified(evidence_type="nonce", subject=str(evidence["vm"]), group="example")

    async def commit(self, verified: Verified, receipt: Receipt) -> None:
        self.commits += 1


@pytest.fixture
def setup(tmp_path: Path,
          store_db: Any) -> tuple[Service, ChallengeStore, NonceVerifier, Inventory]:
    result = init_state(tmp_path / "s", "example.org", ["localhost"])
    config = build_config(result.config_path)
    conn = store_db
    clock = SystemClock()
    challenges = ChallengeStore(conn, ttl=60, clock=clock)
    verifier = NonceVerifier()
    inventory = Inventory(conn, clock)
    service = Service(config=config, authority=load_authority(config.ca),
                      verifiers={"nonce": verifier}, challenges=challenges, inventory=inventory)
    return service, challenges, verifier, inventory


def test_challenge_is_consumed_before_the_verifier_and_only_once(
        setup: tuple[Service, ChallengeStore, NonceVerifier, Inventory]) -> None:
    service, challenges, verifier, inventory = setup
    nonce, _ = challenges.issue()
    body = {"evidence": {"type": "nonce", "nonce": nonce, "vm": "vm-7"},
            "csr": csr_pem(ec_key()), "challenge": nonce}
    decision = asyncio.run(service.attest(body, "127.0.0.1"))
    assert decision.spiffe_id == "spiffe://example.org/ns/default/sa/example-vm"
    assert verifier.seen == [nonce] and verifier.commits == 1
    with pytest.raises(Rejected) as replay:
        asyncio.run(service.attest(body, "127.0.0.1"))
    assert replay.value.reason == "challenge_invalid"
    assert verifier.seen == [nonce]  # the verifier never saw the replay
    # Re-attestation with the same subject re-uses the workload row.
    again, _ = challenges.issue()
    asyncio.run(service.attest({**body, "challenge": again,
                                "evidence": {**body["evidence"], "nonce": again}}, "-"))
    assert [w.subject for w in inventory.list()] == ["vm-7"]


def test_missing_challenge_and_bad_csr(
        setup: tuple[Service, ChallengeStore, NonceVerifier, Inventory]) -> None:
    service, challenges, verifier, _ = setup
    with pytest.raises(Rejected) as missing:
        asyncio.run(service.attest({"evidence": {"type": "nonce", "vm": "x"},
                                    "csr": csr_pem(ec_key())}, "-"))
    assert missing.value.reason == "challenge_invalid"
    nonce, _ = challenges.issue()
    with pytest.raises(Rejected) as bad_csr:
        asyncio.run(service.attest({"evidence": {"type": "nonce", "nonce": nonce, "vm": "x"},
                                    "csr": csr_pem(ec_key(), ca=True), "challenge": nonce}, "-"))
    assert bad_csr.value.reason == "csr_ca_requested"
    assert verifier.seen == [] and verifier.commits == 0
