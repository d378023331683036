"""The renderer against golden files, and every golden config accepted by the real
``envoy --mode validate``. Refresh after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/sidecar/test_render_golden.py`` and review the diff."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.proxy.config import ProxyConfig
from agent.proxy.user import ProxyIdentity
from agent.sidecar.config import OutboundService, SidecarConfig
from agent.sidecar.install import validate_bootstrap
from agent.sidecar.process import SubprocessRunner
from agent.sidecar.render import render_bootstrap, to_yaml
from agent.sidecar.sds import SdsMirror
from agent.sidecar.settings import EnvoyPaths, MeshSettings
from agent.sidecar.tls import secret_documents
from tests.sidecar.pki import MeshCA

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
FIXED = EnvoyPaths(Path("/var/lib/mesh-agent/envoy"))
MESH = MeshSettings(spiffe_id="spiffe://example.org/ns/shop/sa/vm-app",
                    trust_domain="example.org", namespace="shop", service_account="vm-app",
                    group="shop-vms", labels={"app": "vm-app", "version": "v1"})
PAYMENTS = OutboundService("payments", "10.0.0.7", 8443, "spiffe://example.org/ns/pay/sa/api")
LEDGER = OutboundService("ledger", "fd00::17", 9000, "spiffe://example.org/ns/pay/sa/ledger")

CASES = {
    "inbound_only": SidecarConfig(enabled=True, app_ports=(8080,)),
    "inbound_outbound": SidecarConfig(enabled=True, app_ports=(8080,),
                                      outbound_services=(PAYMENTS, LEDGER)),
    "several_app_ports": SidecarConfig(enabled=True, app_ports=(9090, 8080, 3000)),
    "custom_allowed_identities": SidecarConfig(
        enabled=True, app_ports=(8080,),
        allowed_peers=("spiffe://example.org/ns/shop/sa/frontend",
                       "spiffe://example.org/ns/ops/*",
                       "spiffe://partner.example/ns/edge/sa/gateway")),
    "dual_stack": SidecarConfig(enabled=True, app_ports=(8080,), outbound_services=(LEDGER,),
                                ipv6=True),
    "outbound_only": SidecarConfig(enabled=True, outbound_services=(PAYMENTS,),
                                   admin_port=15100,
                                   proxy=ProxyConfig(outbound_port=15101)),
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{path} differs from the renderer (UPDATE_GOLDEN=1)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bootstrap_matches_golden(case: str) -> None:
    _check(f"{case}.yaml", to_yaml(render_bootstrap(CASES[case], MESH, FIXED)))


def test_sds_documents_match_golden() -> None:
    docs = secret_documents(FIXED)
    _check("sds.yaml", "".join(f"# {p}\n{to_yaml(d)}" for p, d in sorted(docs.items())))


def test_golden_facts_that_matter() -> None:
    """The properties a reviewer must not lose in a golden refresh."""
    doc = render_bootstrap(CASES["custom_allowed_identities"], MESH, FIXED)
    assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    inbound = doc["static_resources"]["listeners"][0]
    tls = inbound["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    sans = tls["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/ns/ops/"}} in sans
    assert "default_filter_chain" not in inbound  # plaintext matches nothing
    default = render_bootstrap(CASES["inbound_only"], MESH, FIXED)
    sans = default["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"][
        "typed_config"]["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}]


def test_every_golden_config_passes_envoy_validate(tmp_path: Path, envoy_path: Path,
                                                   mesh_ca: MeshCA) -> None:
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, ProxyIdentity(os.getuid(), os.getgid()))
    mirror.prepare()
    mirror.publish(mesh_ca.generation(mesh_ca.issue(MESH.spiffe_id)))

    async def validate_all() -> dict[str, tuple[bool, str]]:
        out = {}
        for name, config in CASES.items():
            config = SidecarConfig(**{**config.__dict__, "envoy_path": envoy_path})
            path = tmp_path / f"{name}.yaml"
            path.write_text(to_yaml(render_bootstrap(config, MESH, paths)))
            out[name] = await validate_bootstrap(config, path, runner=SubprocessRunner(),
                                                 user=None)
        return out

    results = asyncio.run(validate_all())
    assert {n: ok for n, (ok, _) in results.items()} == dict.fromkeys(CASES, True), results
