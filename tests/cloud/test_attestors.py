"""Agent attestors against the fake metadata servers over real loopback HTTP,
with their evidence checked by the real registrar verifiers."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path

import pytest

from agent.attest.aws import AwsAttestor
from agent.attest.azure import AzureAttestor
from agent.attest.base import AttestError
from agent.attest.gce import GceAttestor
from meshcore.clock import SystemClock
from meshcore.secret import Secret
from registrar.attestation.aws import AwsConfig, AwsVerifier
from registrar.attestation.azure import AzureConfig, AzureVerifier
from registrar.attestation.gce import GceConfig, GceVerifier
from registrar.attestation.groups import GroupRule, GroupRules
from registrar.attestation.jwks import JwksCache
from tests.fakes.azure_metadata import FakeAzure
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.ec2_metadata import FakeEc2
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving

CHALLENGE = "Zq7" * 10 + "xy"
ANY = GroupRules((GroupRule("g", "gce"), GroupRule("g", "aws"), GroupRule("g", "azure")))


def secrets_of(evidence_fields: dict[str, object]) -> list[str]:
    out = []
    for value in evidence_fields.values():
        assert isinstance(value, Secret), "evidence must be held as Secret"
        assert value.reveal() not in repr(value)
        out.append(value.reveal())
    return out


def test_gce_token_is_bound_to_the_challenge(pki: CloudPki,
                                             fake_gce: tuple[FakeGce, str],
                                             caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    fake, url = fake_gce
    attestor = GceAttestor(url + "/computeMetadata/v1")
    assert asyncio.run(attestor.detect())
    evidence = asyncio.run(attestor.evidence(CHALLENGE))
    assert evidence.type == "gce"
    verifier = GceVerifier(GceConfig(groups=ANY), clock=SystemClock(),
                          keys=JwksCache(url + "/oauth2/v3/certs", clock=SystemClock()))
    got = asyncio.run(verifier.verify(evidence.wire(), CHALLENGE))
    assert got.claims["instance_id"] == fake.instance_id
    for secret in secrets_of(dict(evidence.fields)):
        assert secret not in caplog.text


def test_gce_detect_requires_the_flavor_echo(pki: CloudPki):
    fake = FakeEc2(pki)  # answers HTTP, but is not GCE
    with serving(fake.app()) as url:
        assert not asyncio.run(GceAttestor(url + "/computeMetadata/v1").detect())


def test_aws_imdsv2_flow_and_stale_token(pki: CloudPki, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    fake = FakeEc2(pki, uses_per_token=1)  # the token goes stale after the document GET
    with serving(fake.app()) as url:
        attestor = AwsAttestor(url)
        assert asyncio.run(attestor.detect())
        evidence = asyncio.run(attestor.evidence(None))
    assert fake.unauthorized == 1 and fake.puts == 3  # probe, first PUT, one renewal
    fields = evidence.wire()
    assert base64.b64decode(fields["document"]) == fake.document
    verifier = AwsVerifier(AwsConfig(cert_dir=pki.root / "aws", groups=ANY),
                          clock=SystemClock())
    assert asyncio.run(verifier.verify(fields, None)).claims["instance_id"] == \
        "i-0123456789abcdef0"
    for secret in secrets_of(dict(evidence.fields)):
        assert secret not in caplog.text
    # No IMDSv1: a GET without a session token is refused by the fake, and never sent.
    assert fake.unauthorized == 1


def test_aws_lost_put_reply_names_the_hop_limit(pki: CloudPki):
    fake = FakeEc2(pki, drop_put_replies=True)
    with serving(fake.app()) as url:
        attestor = AwsAttestor(url, probe_timeout=0.3)
        assert not asyncio.run(attestor.detect())
        attestor._client._timeout = 0.5  # keep the test short; the default is 5 s
        with pytest.raises(AttestError) as caught:
            asyncio.run(attestor.evidence(None))
    assert "hop limit" in str(caught.value)
    assert "HttpPutResponseHopLimit" in str(caught.value)
    assert caught.value.retryable


def test_azure_document_carries_the_nonce(pki: CloudPki, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    fake = FakeAzure(pki)
    with serving(fake.app()) as url:
        attestor = AzureAttestor(url + "/metadata")
        assert asyncio.run(attestor.detect())
        evidence = asyncio.run(attestor.evidence(CHALLENGE))
        with pytest.raises(AttestError):
            asyncio.run(attestor.evidence("not-alnum!"))
    verifier = AzureVerifier(AzureConfig(roots=(pki.azure_root,),
                                         intermediates=(pki.azure_intermediate,), groups=ANY),
                             clock=SystemClock())
    got = asyncio.run(verifier.verify(evidence.wire(), CHALLENGE))
    assert got.claims["vm_id"] == fake.vm_id
    for secret in secrets_of(dict(evidence.fields)):
        assert secret not in caplog.text


def test_metadata_redirects_are_not_followed(tmp_path: Path):
    from aiohttp import web

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    with serving(app) as url:
        started = time.monotonic()
        with pytest.raises(AttestError) as caught:
            asyncio.run(AwsAttestor(url).evidence(None))
        assert time.monotonic() - started < 5
    assert "HTTP 302" in str(caught.value)
    assert hits == ["/latest/api/token"]
