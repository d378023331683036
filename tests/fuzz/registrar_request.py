"""Target ``registrar_request``: a request body as ``/v1/attest`` and
``/v1/renew`` receive it, through the functions the server runs, down to the
reason it would answer with.

The bytes are the body (already within the size limit): ``parse_json``, then
``parse_attest`` and ``parse_renew`` (fields, host report, the CSR policy),
then the evidence through the real verifier its ``type`` names: EC2 (PKCS#7
and identity document), Azure (PKCS#7, chain, nonce), GCE (JWT against a JWKS)
and join tokens (SQLite store). The cloud keys are the test PKI under
``tests/fuzz/pki`` (the seeds are signed with it, so valid evidence is where
mutation starts), served as the fakes serve them; the clock is fixed at
``now(pki)``, a minute after the PKI was made. The request's ``challenge`` is
handed to the verifier as if the challenge store had issued it.

Allowed: a parsed request and ``Verified`` evidence, or ``Rejected`` with a
reason from ``registrar.rejections.REASONS`` (the OpenAPI enum) whose error body
is JSON. Anything else would be a 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from registrar.api.wire import parse_attest, parse_json, parse_renew
from registrar.attestation.aws import AwsConfig, AwsVerifier
from registrar.attestation.azure import AzureConfig, AzureVerifier
from registrar.attestation.base import Verified, Verifier
from registrar.attestation.gce import GceConfig, GceVerifier
from registrar.attestation.groups import GroupRule, GroupRules
from registrar.attestation.join_token import JoinTokenVerifier
from registrar.attestation.jwks import JwksCache
from registrar.rejections import REASONS, Rejected
from registrar.store.db import connect
from registrar.store.tokens import TokenStore
from tests.fakes.clock import FakeClock
from tests.fakes.cloud_pki import CloudPki
from tests.fuzz.mutate import json_bytes

mutate = json_bytes  # scripts/fuzz's structure-aware mutator for this target

PKI = Path(__file__).parent / "pki"
RULES = GroupRules((GroupRule("web", "gce", {"project_id": "mesh-test"}),
                    GroupRule("web", "aws", {"account_id": "123456789012"}),
                    GroupRule("web", "azure", {})))


def now(pki: CloudPki) -> float:
    """The fixed time of the target and its seeds: the test PKI's certificates
    start a day before they were made (``cloud_pki.issue``)."""
    return pki.azure_signer.not_valid_before_utc.timestamp() + 86400 + 60


@dataclass(frozen=True)
class _World:
    loop: asyncio.AbstractEventLoop
    verifiers: dict[str, Verifier]


@functools.cache
def _world() -> _World:
    pki = CloudPki.load(PKI)
    clock = FakeClock(now(pki))
    jwks = pki.jwks()
    keys = JwksCache("https://gce-metadata.invalid/oauth2/v3/certs", clock=FakeClock(),
                     transport=httpx.MockTransport(lambda _: httpx.Response(200, json=jwks)))
    base = Path(tempfile.mkdtemp(prefix="fuzz-registrar-"))
    tokens = TokenStore(connect(base / "registrar.db"), clock)
    tokens.create("web", 3600)
    verifiers: dict[str, Verifier] = {
        "aws": AwsVerifier(AwsConfig(groups=RULES), clock=clock, certs=pki.aws_certs),
        "azure": AzureVerifier(AzureConfig(roots=(pki.azure_root,),
                                           intermediates=(pki.azure_intermediate,),
                                           groups=RULES), clock=clock),
        "gce": GceVerifier(GceConfig(groups=RULES), keys=keys, clock=clock),
        "join_token": JoinTokenVerifier(tokens),
    }
    return _World(asyncio.new_event_loop(), verifiers)


def _rejected(exc: Rejected) -> None:
    assert exc.reason in REASONS, exc.reason
    json.dumps(exc.body())  # what the server sends must serialise


def check(data: bytes) -> None:
    world = _world()
    try:
        body = parse_json(data)
    except Rejected as exc:
        _rejected(exc)
        return
    try:
        parse_renew(body)
    except Rejected as exc:
        _rejected(exc)
    try:
        request = parse_attest(body)
        verifier = world.verifiers.get(request.evidence_type)
        if verifier is None:
            return  # the server's unsupported_evidence: no parsing left to do
        verified = world.loop.run_until_complete(
            verifier.verify(request.evidence, request.challenge))
    except Rejected as exc:
        _rejected(exc)
        return
    assert isinstance(verified, Verified) and verified.subject, verified
