"""The snapshot builder against golden files, its key facts, and every golden
snapshot accepted by the real ``envoy --mode validate`` (as a static bootstrap).
Refresh after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/registrar/xds/test_snapshot.py`` and review the diff."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.sidecar.sds import ProxyIdentity, SdsMirror
from agent.sidecar.settings import EnvoyPaths
from registrar.catalog.model import Catalog
from registrar.xds.resources import NodeFiles
from registrar.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, bootstrap_static, build
from tests.registrar.xds.catalogs import GROUPS, SHOP
from tests.sidecar.pki import MeshCA

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
FILES = NodeFiles("/var/lib/mesh-agent/envoy/sds")
NODES = {
    "orders": GROUPS["orders"].spiffe_id,
    "frontend": GROUPS["frontend"].spiffe_id,
    "unknown": "spiffe://example.org/ns/elsewhere/sa/nobody",
}
EMPTY = Catalog(trust_domain="example.org", groups=GROUPS, workloads=(), services=())


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def _snapshot_yaml(catalog: Catalog, node: str) -> str:
    snap = build(catalog, node, FILES)
    return _yaml({"versions": dict(snap.versions),
                  "resources": {t: dict(v) for t, v in snap.resources.items()}})


@pytest.mark.parametrize("node", sorted(NODES))
def test_snapshot_matches_golden(node: str) -> None:
    path = GOLDEN / f"shop_{node}.yaml"
    text = _snapshot_yaml(SHOP, NODES[node])
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{path} differs from the builder (UPDATE_GOLDEN=1)"


def test_facts_that_matter() -> None:
    orders = build(SHOP, NODES["orders"], FILES)
    inbound = orders.resources[LISTENER]["virtualInbound"]
    chain = inbound["filter_chains"][0]
    assert chain["filter_chain_match"]["destination_port"] == 9090
    rbac = chain["filters"][0]["typed_config"]["rules"]["policies"]
    principals = [p["authenticated"]["principal_name"] for pol in rbac.values()
                  for p in pol["principals"]]
    assert principals == [{"exact": "spiffe://example.org/ns/shop/sa/frontend"}]
    # The ledger's target port 15432 is served with ops/* and frontend allowed.
    ports = {c["filter_chain_match"]["destination_port"]: c for c in inbound["filter_chains"]}
    assert set(ports) == {9090, 15432}
    # Only healthy endpoints: b (10.0.0.2), not c (unhealthy) or d (draining).
    cla = orders.resources[ENDPOINT]["outbound|9090||orders.shop.mesh"]
    addrs = [e["endpoint"]["address"]["socket_address"]
             for e in cla["endpoints"][0]["lb_endpoints"]]
    assert addrs == [{"address": "10.0.0.2", "port_value": 9090}]
    ledger = orders.resources[ENDPOINT]["outbound|5432||ledger.shop.mesh"]
    assert ledger["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"]["port_value"] == 15432
    # Upstream TLS checks the service's identity, not "any mesh peer".
    tls = orders.resources[CLUSTER]["outbound|9090||orders.shop.mesh"]["transport_socket"]
    sans = tls["typed_config"]["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "URI",
                     "matcher": {"exact": "spiffe://example.org/ns/shop/sa/orders"}}]
    # A node that serves nothing gets no inbound listener; an unknown one neither.
    assert "virtualInbound" not in build(SHOP, NODES["frontend"]).resources[LISTENER]
    assert "virtualInbound" not in build(SHOP, NODES["unknown"]).resources[LISTENER]


def test_versions_change_only_with_their_type() -> None:
    before = build(SHOP, NODES["frontend"], FILES)
    fewer = Catalog(trust_domain=SHOP.trust_domain, groups=SHOP.groups,
                    workloads=SHOP.workloads[:1] + SHOP.workloads[2:], services=SHOP.services)
    after = build(fewer, NODES["frontend"], FILES)
    assert before.versions[ENDPOINT] != after.versions[ENDPOINT]
    assert before.versions[CLUSTER] == after.versions[CLUSTER]
    assert before.versions[LISTENER] == after.versions[LISTENER]
    assert build(SHOP, NODES["frontend"], FILES).versions == before.versions


def test_every_snapshot_passes_envoy_validate(tmp_path: Path, envoy_path: Path,
                                              mesh_ca: MeshCA) -> None:
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, ProxyIdentity(os.getuid(), os.getgid()))
    mirror.prepare()
    mirror.publish(mesh_ca.generation(mesh_ca.issue(NODES["orders"])))
    files = NodeFiles(str(paths.sds_dir))
    failures = {}
    for catalog_name, catalog in (("shop", SHOP), ("empty", EMPTY)):
        for node, spiffe_id in NODES.items():
            path = tmp_path / f"{catalog_name}-{node}.yaml"
            path.write_text(_yaml(bootstrap_static(build(catalog, spiffe_id, files),
                                                   spiffe_id, 15000)))
            result = subprocess.run([str(envoy_path), "--mode", "validate", "-c", str(path)],
                                    capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                failures[path.name] = (result.stdout + result.stderr)[-2000:]
    assert failures == {}
