"""istiod without Kubernetes takes the config the VM tests need from --configDir,
watches the directory, and authenticates CSRs by JWT_RULE."""

from __future__ import annotations

import pytest

from tests.fixtures.istiod import Istiod
from tests.istio import resources

pytestmark = [pytest.mark.istio, pytest.mark.netns]

NS = "cfg-test"


def test_istiod_accepts_every_kind_the_vm_tests_use(istiod: Istiod) -> None:
    offset = len(istiod.log_text())
    labels = {"app": "cfg"}
    docs = {
        "cfg-se.yaml": resources.service_entry("cfg", NS, f"cfg.{NS}.svc.cluster.local",
                                               "10.99.9.9", 8080, labels),
        "cfg-we.yaml": resources.workload_entry("cfg-1", NS, "10.88.0.250", "cfg-sa", labels),
        "cfg-wg.yaml": resources.workload_group("cfg", NS, "cfg-sa", labels, probe_port=8080),
        "cfg-pa.yaml": resources.peer_authentication_strict("cfg-strict", NS),
        "cfg-ap.yaml": resources.deny_principals("cfg-deny", NS, labels,
                                                 [f"cluster.local/ns/{NS}/sa/nobody"]),
    }
    kinds = [("ServiceEntry", "cfg"), ("WorkloadEntry", "cfg-1"), ("WorkloadGroup", "cfg"),
             ("PeerAuthentication", "cfg-strict"), ("AuthorizationPolicy", "cfg-deny")]
    try:
        for name, text in docs.items():
            istiod.write_config(name, text)
        for kind, name in kinds:
            istiod.wait_config(kind, NS, name)
        # The service registry (not just the config store) has the ServiceEntry,
        # with the WorkloadEntry as its endpoint.
        registry = istiod.debug_json("/debug/registryz")
        hosts = {svc.get("hostname") for svc in registry}
        assert f"cfg.{NS}.svc.cluster.local" in hosts
        assert istiod.rejections(offset) == []
    finally:
        for name in docs:
            istiod.remove_config(name)
    for kind, name in kinds:
        istiod.wait_config(kind, NS, name, present=False)


def test_a_malformed_file_is_rejected_and_named_in_the_log(istiod: Istiod) -> None:
    """The rejection check is live: istiod logs a file it cannot parse."""
    offset = len(istiod.log_text())
    istiod.write_config("zz-broken.yaml", "apiVersion: networking.istio.io/v1\nkind: "
                        "ServiceEntry\nmetadata: {name: broken, namespace: x}\nspec: [1, 2\n")
    try:
        import time
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not istiod.rejections(offset):
            time.sleep(0.3)
        assert any("zz-broken.yaml" in line for line in istiod.rejections(offset)), \
            istiod.log_text()[offset:][-3000:]
    finally:
        istiod.remove_config("zz-broken.yaml")


def test_debug_endpoints_answer(istiod: Istiod) -> None:
    for path in ("/debug/configz", "/debug/registryz", "/debug/syncz"):
        status, body = istiod.debug(path)
        assert status == 200, (path, body[:300])
