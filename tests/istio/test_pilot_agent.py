"""Istio's own VM data plane (pilot-agent + Envoy, istioctl's files) joins the
kube-less istiod: a certificate from the plug-in CA by JWT, XDS config, and
mTLS calls by hostname between VMs, with an AuthorizationPolicy enforced."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509

from tests.fixtures.istiod import Istiod
from tests.istio import resources
from tests.istio.conftest import PilotAgentFactory
from tests.istio.pilot_agent import PilotAgentVm

pytestmark = [pytest.mark.istio, pytest.mark.netns]

NS = "vm-app"
HOST = f"echo.{NS}.svc.cluster.local"
VIP = "10.99.0.10"
PORT = 8080
ECHO = {"app": "echo"}


def _chain(agent: PilotAgentVm) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((agent.certs / "cert-chain.pem").read_bytes())


def _spiffe(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def test_pilot_agent_vm_joins_istiod(istiod: Istiod,
                                     pilot_agent_vm: PilotAgentFactory) -> None:
    agent = pilot_agent_vm("join", "vm-join", "join-sa")

    # The workload certificate came from istiod's CA (JWT_RULE authenticated the
    # istio-token) and chains to the plug-in root.
    chain = _chain(agent)
    assert _spiffe(chain[0]) == ["spiffe://cluster.local/ns/vm-join/sa/join-sa"]
    root = x509.load_pem_x509_certificate(istiod.root_cert.read_bytes())
    for child, parent in zip([*chain, root], [*chain[1:], root], strict=False):
        if child is not parent:
            child.verify_directly_issued_by(parent)
    assert chain[-1] == root or chain[-1].issuer == root.subject

    # Envoy holds the same certificate and took its config from istiod.
    status, certs = agent.admin("/certs")
    assert status == 200
    assert format(chain[0].serial_number, "x") in certs
    assert agent.stat("control_plane.connected_state") == 1
    listeners, clusters = _xds_names(agent)
    assert {"virtualInbound", "virtualOutbound"} <= set(listeners), listeners
    assert {"PassthroughCluster", "BlackHoleCluster", "InboundPassthroughCluster"} <= set(
        clusters), clusters
    assert "xds-grpc" not in clusters  # static, from the bootstrap, not from istiod

    # A ServiceEntry written into istiod's config dir reaches this Envoy.
    host = "join-svc.vm-join.svc.cluster.local"
    istiod.write_config("join-se.yaml", resources.service_entry(
        "join-svc", "vm-join", host, "10.99.1.1", 9090, {"app": "join-svc"}))
    try:
        deadline = time.monotonic() + 30
        while f"outbound|9090||{host}" not in _xds_names(agent)[1]:
            assert time.monotonic() < deadline, _xds_names(agent)[1]
            time.sleep(0.5)
    finally:
        istiod.remove_config("join-se.yaml")


def _xds_names(agent: PilotAgentVm) -> tuple[list[str], list[str]]:
    """Names of the listeners and clusters Envoy got over XDS."""
    status, body = agent.admin("/config_dump")
    assert status == 200, body[:300]
    kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
    listeners = [entry["name"] for entry in
                 kinds["ListenersConfigDump"].get("dynamic_listeners", [])]
    clusters = [entry["cluster"]["name"] for entry in
                kinds["ClustersConfigDump"].get("dynamic_active_clusters", [])]
    return listeners, clusters


@pytest.fixture
def echo_service(istiod: Istiod) -> Iterator[None]:
    files = {
        "vm-app-se.yaml": resources.service_entry("echo", NS, HOST, VIP, PORT, ECHO),
        "vm-app-wg.yaml": resources.workload_group("echo", NS, "echo-sa", ECHO),
        "mesh-strict.yaml": resources.peer_authentication_strict(),
        "vm-app-deny.yaml": resources.deny_principals(
            "deny-intruder", NS, ECHO, [f"cluster.local/ns/{NS}/sa/intruder-sa"]),
    }
    for name, text in files.items():
        istiod.write_config(name, text)
    yield
    for name in [*files, "vm-app-we.yaml"]:
        istiod.remove_config(name)


def test_mtls_by_hostname_between_pilot_agent_vms_and_deny_policy(
        istiod: Istiod, pilot_agent_vm: PilotAgentFactory, echo_service: None) -> None:
    server = pilot_agent_vm("echo", NS, "echo-sa", labels=ECHO, start=False)
    istiod.write_config("vm-app-we.yaml", resources.workload_entry(
        "echo-1", NS, server.vm.ip, "echo-sa", ECHO))
    istiod.wait_config("WorkloadEntry", NS, "echo-1")
    server.serve(PORT, "echo")
    server.start()
    server.wait_ready()
    client = pilot_agent_vm("client", NS, "client-sa")
    intruder = pilot_agent_vm("intruder", NS, "intruder-sa")

    # Plain HTTP by hostname from the client app: Istio's DNS proxy answers the
    # name, capture takes the call to Envoy, which speaks mTLS to the server's
    # sidecar; the app sees the caller's identity in the header the sidecar adds.
    body = json.loads(client.vm.call_until(f"http://{HOST}:{PORT}/hello", 200))
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"URI=spiffe://cluster.local/ns/{NS}/sa/client-sa" in xfcc, body
    assert f"By=spiffe://cluster.local/ns/{NS}/sa/echo-sa" in xfcc, body
    assert body["peer"] == "127.0.0.6"  # Envoy's inbound passthrough source

    # The server sidecar's access log names the caller and shows TLS.
    deadline = time.monotonic() + 10
    entries: list[dict[str, str]] = []
    while time.monotonic() < deadline and not entries:
        entries = [json.loads(line) for line in server.log_text().splitlines()
                   if line.startswith("{") and '"path":"/hello"' in line.replace(" ", "")]
        time.sleep(0.5)
    assert entries, server.log_text()[-3000:]
    assert entries[-1]["peer"] == f"spiffe://cluster.local/ns/{NS}/sa/client-sa"
    assert entries[-1]["tls"].startswith("TLSv1")

    # STRICT mTLS: a caller outside the mesh cannot reach the app in plain text.
    plain = istiod.network.plain_call_from_outside(f"http://{server.vm.ip}:{PORT}/")
    assert plain.returncode != 0 and '"app": "echo"' not in plain.stdout, plain

    # The third identity is refused by the AuthorizationPolicy (RBAC 403).
    denied = intruder.vm.call_until(f"http://{HOST}:{PORT}/hello", 403)
    assert "RBAC" in denied, denied
    # ...while the client is still allowed.
    client.vm.call_until(f"http://{HOST}:{PORT}/again", 200)


@pytest.mark.parametrize("why", ["expired", "wrong audience", "wrong issuer",
                                 "audience not a list"])
def test_istiod_refuses_a_bad_istio_token(istiod: Istiod, pilot_agent_vm: PilotAgentFactory,
                                          why: str) -> None:
    """JWT_RULE is really enforced: no certificate for a token it must refuse."""
    token = {"expired": istiod.mint_token("vm-bad", "bad-sa", ttl=-120),
             "wrong audience": istiod.mint_token("vm-bad", "bad-sa", aud="not-istio-ca"),
             "wrong issuer": istiod.mint_token("vm-bad", "bad-sa", issuer="https://evil.test"),
             "audience not a list": istiod.mint_token("vm-bad", "bad-sa", aud_as_string=True)}
    offset = len(istiod.log_text())
    agent = pilot_agent_vm("bad", "vm-bad", "bad-sa", token=token[why], start=False)
    agent.start()
    # pilot-agent's first CSR can come late on a loaded machine (it starts Envoy
    # and its local XDS proxy first): wait up to a minute; a refusal ends the wait.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not istiod.rejections(offset):
        time.sleep(0.5)
    assert istiod.rejections(offset), istiod.log_text()[offset:][-2000:]
    assert not (agent.certs / "cert-chain.pem").exists()
    # (Envoy's own control_plane.connected_state only covers its link to
    # pilot-agent's local XDS proxy; istiod's view is the one that counts.)
    assert not _synced(istiod, agent)


def _synced(istiod: Istiod, agent: PilotAgentVm) -> dict[str, Any] | None:
    """istiod's sync status for this VM's proxy, if it is a connected XDS client."""
    proxy = f"{agent.name}.{agent.files.namespace}"
    for entry in istiod.debug_json("/debug/syncz"):
        if entry.get("proxy") == proxy:
            return dict(entry)
    return None


def test_istiod_restart_pilot_agent_reconnects(istiod: Istiod,
                                               pilot_agent_vm: PilotAgentFactory) -> None:
    agent = pilot_agent_vm("restart", "vm-restart", "restart-sa")
    assert _synced(istiod, agent) is not None
    serial = _chain(agent)[0].serial_number
    istiod.restart()
    # A fresh istiod process knows only proxies that connected to it.
    deadline = time.monotonic() + 60
    while (sync := _synced(istiod, agent)) is None or not sync.get("cluster_acked"):
        assert time.monotonic() < deadline, agent.problems()[-10:]
        time.sleep(0.5)
    # Same CA after the restart: the certificate the VM holds is still good for XDS.
    assert _chain(agent)[0].serial_number == serial
    assert istiod.tls_handshake()
