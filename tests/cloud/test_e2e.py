"""Must-show 1 and 4: in a VM namespace with only platform evidence (no join
token), a real agent bootstraps from a real registrar, renews over mTLS, and
re-attests after its state is wiped (GCE, Azure) or after eviction (AWS).
Neither process ever logs a metadata token or identity document."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.attest import detect
from tests.cloud.netns import CloudVm, VmAgent
from tests.cloud.test_netns_detect import PROBE
from tests.fakes.azure_metadata import SUBSCRIPTION
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving
from tests.fixtures.registrar import RegistrarProcess

pytestmark = pytest.mark.netns

SHORT_TTL = 12  # the fixture sets cert_backdate 2 s: 14 s lifetime, renewal due ~5 s after issue
# A JWT (base64url JSON header '{"...' then payload) or any long base64 blob
# (documents, PKCS#7) must never reach a log line.
LEAKS = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ|[A-Za-z0-9+/]{160,}")


def evidence_options(cloud: str, pki: CloudPki, jwks: str) -> dict[str, Any]:
    if cloud == "gce":
        return {"jwks_url": jwks, "max_instance_age": "1h",
                "groups": [{"group": "web", "match": {"project_id": "mesh-test"}}]}
    if cloud == "aws":
        return {"cert_dir": str(pki.root / "aws"), "max_instance_age": "1h",
                "allowed_accounts": ["123456789012"],
                "groups": [{"group": "web", "match": {"account_id": "123456789012"}}]}
    return {"root_file": str(pki.root / "azure/root.pem"),
            "intermediates_file": str(pki.root / "azure/intermediate.pem"),
            "allowed_subscriptions": [SUBSCRIPTION],
            "groups": [{"group": "web", "match": {"subscription_id": SUBSCRIPTION}}]}


def wait_for(predicate: Any, timeout: float, what: str, agent: VmAgent) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout}s:\n{agent.log_text()[-4000:]}")


@pytest.mark.parametrize("cloud", ["gce", "aws", "azure"])
def test_platform_only_bootstrap_renew_reattest(cloud: str, vm: CloudVm, pki: CloudPki,
                                                tmp_path: Path,
                                                registrar_factory: Any) -> None:
    vm.serve_metadata(cloud, pki.root)
    with serving(FakeGce(pki).app()) as google:
        reg: RegistrarProcess = registrar_factory(
            host=vm.host_ip, groups={"web": ("prod", "web-vm", SHORT_TTL)},
            config={"evidence": {cloud: evidence_options(cloud, pki,
                                                        google + "/oauth2/v3/certs")}})
        # auto, unless the host's own DMI names a cloud (then that would win).
        method = "auto" if detect.classify_dmi(detect.read_dmi(Path("/"))) is None else cloud
        agent = VmAgent.inside(vm, tmp_path / "agent", reg, method=method)
        assert not agent.token_file.exists()
        agent.start()
        try:
            agent.wait_ready(timeout=45)
            status = agent.status()
            assert status["attestor"] == cloud, status
            assert status["spiffe_id"] == "spiffe://example.org/ns/prod/sa/web-vm"
            # Renewal over mTLS with the platform-attested identity.
            wait_for(lambda: agent.status()["rotations"] >= 2, 40, "two renewals", agent)
            assert agent.stop() == 0

            shutil.rmtree(agent.state_dir)  # the VM lost its disk state
            if cloud == "aws":
                # The identity document has no nonce: a second first-use is refused...
                agent.start()
                wait_for(lambda: "instance_already_attested" in agent.log_text(), 30,
                         "refusal of a second first use", agent)
                agent.kill()
                rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
                [row] = [r for r in rows if r["evidence_type"] == "aws"]
                reg.cli("workloads", "evict", str(row["id"]))
                shutil.rmtree(agent.state_dir, ignore_errors=True)
            agent.start()  # ...while GCE/Azure evidence is fresh every time
            agent.wait_ready(timeout=45)
            assert agent.status()["attestor"] == cloud
            assert agent.stop() == 0
        finally:
            agent.kill()
    rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
    assert [r["state"] for r in rows if r["evidence_type"] == cloud] == ["active"]
    logs = agent.log_text() + reg.log_text()
    assert not LEAKS.findall(logs), LEAKS.findall(logs)[:3]
    # What the metadata server hands out (identical for EC2, same shape otherwise)
    # is exactly what the pattern catches, and it is not in the logs.
    sample = json.loads(vm.python(PROBE))["evidence"]
    for key, value in sample.items():
        if key != "type":
            assert LEAKS.search("".join(value.split())), key
            for line in value.splitlines():  # EC2 wraps its PKCS#7 at 76 columns
                assert line not in logs


def test_cert_expired_while_off_comes_back_by_itself(vm: CloudVm, pki: CloudPki,
                                                     tmp_path: Path,
                                                     registrar_factory: Any) -> None:
    """GCE evidence is fresh on every call, so a VM that was off past its
    certificate's expiry re-attests on boot with no operator."""
    vm.serve_metadata("gce", pki.root)
    with serving(FakeGce(pki).app()) as google:
        reg = registrar_factory(host=vm.host_ip, groups={"web": ("prod", "web-vm", 1)},
                                config={"evidence": {"gce": evidence_options(
                                    "gce", pki, google + "/oauth2/v3/certs")}})
        agent = VmAgent.inside(vm, tmp_path / "agent", reg, method="gce")
        agent.start()
        try:
            agent.wait_ready(timeout=45)
            agent.kill()  # powered off with a certificate that expires in ~1 s
            time.sleep(2.5)
            chain = (agent.credentials / "current" / "cert-chain.pem").read_bytes()
            leaf = x509.load_pem_x509_certificates(chain)[0]
            assert leaf.not_valid_after_utc.timestamp() < time.time()
            agent.start()
            agent.wait_ready(timeout=45)
        finally:
            agent.kill()
    assert reg.log_text().count("attest ok") >= 2, reg.log_text()[-2000:]
