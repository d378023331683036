"""In a VM namespace with the default metadata URLs (169.254.169.254 and
metadata.google.internal), ``auto`` picks the fake cloud that answers, its
evidence verifies, and with no metadata server it falls back to the token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cloud.netns import CloudVm
from tests.fakes.cloud_pki import CloudPki

pytestmark = pytest.mark.netns

# Default config (real URLs); an empty sysfs root so the host's DMI cannot decide.
PROBE = """
import asyncio, json, logging, pathlib, tempfile, time
from agent.attest import registry
from agent.config.model import build_config
from meshcore.config.source import Source
cfg = build_config(Source(data={"registrar": {"url": "https://registrar.invalid"},
                                "attestation": {"probe_timeout": "1s"}},
                          origins={}, default_file="agent.yaml")).attestation
async def main():
    started = time.monotonic()
    chosen = await registry.choose(cfg, sysfs_root=pathlib.Path(tempfile.mkdtemp()))
    elapsed = time.monotonic() - started
    evidence = None
    if chosen.name != "token":
        evidence = (await chosen.evidence("Ch4llenge" * 3 + "abcde")).wire()
    print(json.dumps({"name": chosen.name, "elapsed": elapsed, "evidence": evidence}))
asyncio.run(main())
"""


@pytest.mark.parametrize("cloud", ["gce", "aws", "azure"])
def test_auto_picks_the_platform_with_default_urls(vm: CloudVm, pki: CloudPki, cloud: str):
    vm.serve_metadata(cloud, pki.root)
    got = json.loads(vm.python(PROBE))
    assert got["name"] == cloud
    assert got["evidence"]["type"] == cloud


def test_auto_falls_back_to_token_when_nothing_answers(vm: CloudVm, tmp_path: Path):
    got = json.loads(vm.python(PROBE))
    assert got["name"] == "token"
    assert got["elapsed"] < 1.0 + 2.0  # bounded by probe_timeout, not hanging
