"""mesh-agent in Istio mode joins the real, kube-less istiod: istioctl's files
unchanged, a certificate from istiod's CA that chains to the plug-in root,
Envoy configured by istiod over ADS (connected, listeners and clusters from
istiod) with its certificate from the agent's SDS socket, and renewal over
mTLS after the istio-token has expired."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

import pytest
from cryptography import x509

from agent.istio.token import parse_token
from tests.fixtures.istiod import Istiod
from tests.istio.conftest import MeshAgentFactory
from tests.istio.mesh_agent import MeshAgentVm

pytestmark = [pytest.mark.istio, pytest.mark.netns]


def _spiffe(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def test_mesh_agent_joins_istiod_and_renews_over_mtls_after_the_token_expired(
        istiod: Istiod, mesh_agent_vm: MeshAgentFactory) -> None:
    # A 12 s istio-token and 3 min certificates (istiod backdates them 2 min, so
    # the half-life point is 15-45 s after issuance): the first renewal happens
    # after the token has expired, so only mTLS can make it succeed.
    agent = mesh_agent_vm("magent", "vm-magent", "magent-sa", token_ttl=12, cert_ttl="3m")
    agent.start()
    agent.wait_ready()

    # The certificate came from istiod's CA and chains to the plug-in root.
    chain = agent.chain()
    assert _spiffe(chain[0]) == ["spiffe://cluster.local/ns/vm-magent/sa/magent-sa"]
    root = x509.load_pem_x509_certificate(istiod.root_cert.read_bytes())
    issuers = [*chain[1:], root]
    for child, parent in zip(chain, issuers, strict=False):
        child.verify_directly_issued_by(parent)

    # Envoy is connected to istiod and holds istiod's listeners and clusters,
    # and serves the certificate the agent handed it over SDS.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent.stat("control_plane.connected_state") != 1:
        time.sleep(0.5)
    assert agent.stat("control_plane.connected_state") == 1, agent.log_text()[-3000:]
    status, body = agent.admin("/config_dump")
    assert status == 200
    kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
    listeners = {e["name"]: e for e in kinds["ListenersConfigDump"].get("dynamic_listeners", [])
                 if "name" in e}
    clusters = [e["cluster"]["name"]
                for e in kinds["ClustersConfigDump"].get("dynamic_active_clusters", [])]
    # Listeners and clusters came from istiod over ADS and Envoy took them.
    assert "active_state" in listeners["virtualOutbound"], listeners.get("virtualOutbound")
    assert {"BlackHoleCluster", "InboundPassthroughCluster"} <= set(clusters), clusters
    _, certs = agent.admin("/certs")
    assert format(chain[0].serial_number, "x") in certs

    # Renewal after the token's expiry, over mTLS; Envoy gets the new certificate.
    first_serial = chain[0].serial_number
    token = (agent.istio_dir / "istio-token").read_text().strip()
    token_exp = parse_token(token, agent.istio_dir / "istio-token").expires
    assert token_exp is not None
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and agent.status().get("rotations", 0) < 1:
        time.sleep(1)
    assert agent.status().get("rotations", 0) >= 1, agent.log_text()[-3000:]
    renewed = agent.chain()[0]
    assert renewed.serial_number != first_serial, (agent.status(), agent.log_text()[-5000:])
    renewed_at = dt.datetime.fromisoformat(agent.status()["last_success"])
    assert renewed_at > token_exp, "the renewal must happen after the token expired"
    assert _spiffe(renewed) == _spiffe(chain[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and format(renewed.serial_number, "x") not in \
            agent.admin("/certs")[1]:
        time.sleep(0.5)
    assert format(renewed.serial_number, "x") in agent.admin("/certs")[1], \
        agent.log_text()[-5000:]
    assert agent.stat("control_plane.connected_state") == 1
    assert token not in agent.log_text()

    assert agent.stop() == 0
    assert not (agent.state_dir / "envoy" / "sds.sock").exists()


def _rules(agent: MeshAgentVm) -> list[str]:
    text = agent.vm.exec("iptables-save").stdout
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_capture_from_cluster_env_exempts_istiod_and_restores_the_baseline(
        istiod: Istiod, mesh_agent_vm: MeshAgentFactory) -> None:
    agent = mesh_agent_vm("mcap", "vm-mcap", "mcap-sa", capture=True)
    baseline = _rules(agent)
    agent.start()
    agent.wait_ready()
    assert agent.status()["conditions"] == {"sidecar": True, "capture": True}
    nat = agent.vm.exec("iptables-save", "-t", "nat").stdout
    assert "--to-ports 15006" in nat and "--to-ports 15001" in nat
    # istioctl's ISTIO_LOCAL_EXCLUDE_PORTS (22,15090,15021,15020) stay uncaptured...
    for port in (22, 15020, 15021, 15090):
        assert f"--dport {port} -j RETURN" in nat, nat
    # ...and istiod is always reachable without Envoy: exempt once, on its port.
    assert [ln for ln in nat.splitlines() if istiod.address in ln] == [
        f"-A MESH_OUTPUT -d {istiod.address}/32 -p tcp -m tcp --dport 15012 -j RETURN"], nat
    assert agent.stop() == 0
    assert _rules(agent) == baseline


def test_a_wrong_root_cert_is_exit_78(istiod: Istiod, mesh_agent_vm: MeshAgentFactory) -> None:
    from tests.fixtures.certs import TestCA

    agent = mesh_agent_vm("mroot", "vm-mroot", "mroot-sa")
    (agent.istio_dir / "root-cert.pem").write_bytes(TestCA().bundle_pem)
    agent.start()
    assert agent.proc is not None
    assert agent.proc.wait(60) == 78
    log = agent.log_text()
    assert "istiod_untrusted" in log and "root-cert.pem" in log, log[-3000:]
    assert not (agent.state_dir / "credentials" / "current").exists()


def test_envoy_reconnects_after_istiod_restarts(istiod: Istiod,
                                                mesh_agent_vm: MeshAgentFactory) -> None:
    agent = mesh_agent_vm("mrestart", "vm-mrestart", "mrestart-sa")
    agent.start()
    agent.wait_ready()

    def connected() -> bool:
        return agent.stat("control_plane.connected_state") == 1

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not connected():
        time.sleep(0.5)
    assert connected()
    streams = agent.stat("cluster.xds-grpc.upstream_cx_total") or 0
    istiod.restart()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            connected() and (agent.stat("cluster.xds-grpc.upstream_cx_total") or 0) > streams):
        time.sleep(0.5)
    # A new connection to istiod, and connected again.
    assert (agent.stat("cluster.xds-grpc.upstream_cx_total") or 0) > streams
    assert connected(), agent.log_text()[-3000:]
    assert agent.get("http://127.0.0.1:15020/ready")[0] == 200
    assert agent.stop() == 0


def test_istiod_down_at_renewal_time_keeps_the_old_certificate(
        istiod: Istiod, mesh_agent_vm: MeshAgentFactory) -> None:
    agent = mesh_agent_vm("mdown", "vm-mdown", "mdown-sa", cert_ttl="3m")
    agent.start()
    agent.wait_ready()
    first = agent.chain()[0].serial_number
    istiod.stop()
    try:
        # The renewal point (15-45 s after issuance) passes while istiod is down.
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline and \
                agent.status()["failures"].get("unreachable", 0) < 2:
            time.sleep(1)
        status = agent.status()
        assert status["failures"].get("unreachable", 0) >= 2, status
        assert status["ready"] is True and status["rotations"] == 0
        assert agent.chain()[0].serial_number == first
        assert format(first, "x") in agent.admin("/certs")[1]
    finally:
        istiod.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and agent.status()["rotations"] < 1:
        time.sleep(1)
    assert agent.status()["rotations"] >= 1, agent.log_text()[-3000:]
    assert agent.chain()[0].serial_number != first
    assert agent.stop() == 0


def test_check_reports_each_file_and_verifies_istiod(istiod: Istiod,
                                                     mesh_agent_vm: MeshAgentFactory) -> None:
    agent = mesh_agent_vm("mcheck", "vm-mcheck", "mcheck-sa")
    result = agent.vm.exec(sys.executable, "-m", "agent", "check", "--config",
                           str(agent.config_path), check=False)
    lines = result.stdout.splitlines()
    for name in ("cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"):
        assert any(ln.startswith("ok") and f" {name}: " in ln for ln in lines), result.stdout
    ca = next(ln for ln in lines if " istiod CA: " in ln)
    assert ca.startswith("ok") and f"{istiod.address}:15012 verified as {istiod.host}" in ca
    assert result.returncode == 0, result.stdout + result.stderr
