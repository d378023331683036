"""The ADS bootstrap (``sidecar.mode: xds``) against golden files, the facts the
registrar's ADS server relies on, and the real ``envoy --mode validate``.
Refresh with ``UPDATE_GOLDEN=1`` and review the diff."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.proxy.user import ProxyIdentity
from agent.sidecar.ads import XdsServer, render_ads_bootstrap
from agent.sidecar.config import SidecarConfig
from agent.sidecar.install import validate_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import to_yaml
from agent.sidecar.sds import SdsMirror
from agent.sidecar.settings import EnvoyPaths
from tests.sidecar.pki import MeshCA
from tests.sidecar.test_render_golden import FIXED, MESH, _check

SERVERS = {"ads_ip": XdsServer("10.0.0.5", 15010),
           "ads_name": XdsServer("registrar.example", 15010)}


@pytest.mark.parametrize("case", sorted(SERVERS))
def test_ads_bootstrap_matches_golden(case: str) -> None:
    doc = render_ads_bootstrap(MESH, SERVERS[case], FIXED, admin_port=15000)
    _check(f"{case}.yaml", to_yaml(doc))


def test_ads_facts_the_registrar_relies_on() -> None:
    doc = render_ads_bootstrap(MESH, SERVERS["ads_ip"], FIXED, admin_port=15000)
    assert doc["node"]["id"] == MESH.spiffe_id  # the ADS server compares it to the cert
    assert doc["node"]["metadata"]["SDS_DIR"] == "/var/lib/mesh-agent/envoy/sds"
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert "listeners" not in doc["static_resources"]  # all of them come over ADS
    (cluster,) = doc["static_resources"]["clusters"]
    tls = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    # Only file SDS references: no secret material in the bootstrap.
    assert tls["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    validation = tls["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.5"}}]
    assert "key.pem" not in to_yaml(doc) and "PRIVATE" not in to_yaml(doc)


def test_ads_bootstraps_pass_envoy_validate(tmp_path: Path, envoy_path: Path,
                                            mesh_ca: MeshCA) -> None:
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, ProxyIdentity(os.getuid(), os.getgid()))
    mirror.prepare()
    mirror.publish(mesh_ca.generation(mesh_ca.issue(MESH.spiffe_id)))
    config = SidecarConfig(enabled=True, envoy_path=envoy_path)

    async def validate_all() -> dict[str, tuple[bool, str]]:
        out = {}
        for name, server in SERVERS.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(to_yaml(render_ads_bootstrap(MESH, server, paths, admin_port=15000)))
            out[name] = await validate_bootstrap(config, path, runner=SubprocessRunner(),
                                                 user=None)
        return out

    results = asyncio.run(validate_all())
    assert {n: ok for n, (ok, _) in results.items()} == dict.fromkeys(SERVERS, True), results
