"""Traffic through mesh-agent VMs in Istio mode, against the real kube-less istiod.

b. An app on a mesh-agent VM (capture on) calls a ServiceEntry service by
   hostname in plain HTTP: the call is captured, crosses the network as TLS
   (a packet tap on the server's interface never sees the plain request), and
   the server's sidecar logs the caller's SPIFFE ID.
c. Interop with Istio's own VM data plane: calls both ways between a
   mesh-agent VM and a pilot-agent VM, mTLS with the right identities on each
   side, and a third identity refused by an AuthorizationPolicy in istiod's
   config directory.

Names: the agent has no DNS proxy fed by istiod (pilot-agent's is fed by
istiod's name table), so an app on a mesh-agent VM resolves a mesh hostname
like any other name: here /etc/hosts maps it to the ServiceEntry's VIP
(docs/istio.md, "Calling mesh services by name").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.istiod import Istiod
from tests.istio import resources
from tests.istio.conftest import MeshAgentFactory, PilotAgentFactory
from tests.istio.wire import TLS_HANDSHAKE, WireTap

pytestmark = [pytest.mark.istio, pytest.mark.netns]

PORT = 8080


def wait_entry(entries: Callable[[], list[dict[str, Any]]], path: str,
               timeout: float = 15) -> dict[str, Any]:
    """The last access log entry for ``path`` (Envoy flushes its log every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in entries() if e.get("path") == path]
        if found:
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"no access log entry for {path}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """pilot-agent's log: Envoy's JSON access log lines among its own."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def istio_config(istiod: Istiod) -> Iterator[Callable[[str, str], None]]:
    """``put(file, yaml)`` into istiod's config dir; every file is removed after."""
    written: list[str] = []

    def put(name: str, text: str) -> None:
        istiod.write_config(name, text)
        written.append(name)

    yield put
    for name in written:
        istiod.remove_config(name)


# -- b ---------------------------------------------------------------------------

NS_B = "vm-mesh"
HOST_B = f"echo.{NS_B}.svc.cluster.local"
VIP_B = "10.99.2.10"


def test_app_on_mesh_agent_vm_calls_service_entry_by_hostname_over_mtls(
        istiod: Istiod, mesh_agent_vm: MeshAgentFactory,
        istio_config: Callable[[str, str], None]) -> None:
    labels = {"app": "mecho"}
    server = mesh_agent_vm("mserver", NS_B, "mserver-sa", labels=labels, capture=True)
    client = mesh_agent_vm("mclient", NS_B, "mclient-sa", capture=True)
    istio_config("b-se.yaml", resources.service_entry("echo", NS_B, HOST_B, VIP_B, PORT,
                                                      labels))
    istio_config("b-we.yaml", resources.workload_entry("mserver-1", NS_B, server.vm.ip,
                                                       "mserver-sa", labels))
    istio_config("b-strict.yaml", resources.peer_authentication_strict("strict", NS_B))
    for kind, name in (("ServiceEntry", "echo"), ("WorkloadEntry", "mserver-1"),
                       ("PeerAuthentication", "strict")):
        istiod.wait_config(kind, NS_B, name)
    # The app resolves the hostname to the ServiceEntry's VIP through /etc/hosts.
    client.vm.set_hosts(f"{VIP_B} {HOST_B}\n")
    server.serve(PORT, "mecho")
    server.start()
    client.start()
    server.wait_ready()
    client.wait_ready()
    assert client.status()["conditions"]["capture"] is True

    with WireTap(server.vm.name, PORT) as tap:
        body = json.loads(client.vm.call_until(f"http://{HOST_B}:{PORT}/hello-b", 200))
    # The server's app got the call from its own sidecar (127.0.0.6), which
    # names the client's certificate identity and its own.
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert f"URI={client.spiffe_id}" in xfcc and f"By={server.spiffe_id}" in xfcc, body
    assert body["peer"] == "127.0.0.6", body

    # Captured: the client's own Envoy carried the call to the ServiceEntry's
    # cluster and verified the server's identity.
    sent = wait_entry(client.access_log, "/hello-b")
    # (%UPSTREAM_CLUSTER% is the cluster's stat name, which istiod ends with ';')
    assert sent["cluster"].rstrip(";") == f"outbound|{PORT}||{HOST_B}", sent
    assert sent["upstream_peer"] == server.spiffe_id, sent
    # The server's sidecar logs the caller's SPIFFE ID, over TLS.
    received = wait_entry(server.access_log, "/hello-b")
    assert received["peer"] == client.spiffe_id, received
    assert received["tls"].startswith("TLSv1"), received

    # On the wire: TLS handshakes towards the server, and never the plain request.
    assert tap.first_payloads(), "the tap saw no connection to the server"
    assert all(p[0] == TLS_HANDSHAKE for p in tap.first_payloads()), tap.first_payloads()
    assert b"/hello-b" not in tap.sent_to_port() + tap.received_from_port()

    # STRICT: a client outside the mesh cannot reach the app in plain text.
    plain = istiod.network.plain_call_from_outside(f"http://{server.vm.ip}:{PORT}/")
    assert plain.returncode != 0 and "mecho" not in plain.stdout, plain
    assert client.stop() == 0 and server.stop() == 0


# -- c ---------------------------------------------------------------------------

NS_C = "vm-interop"
M_HOST, M_VIP = f"magent.{NS_C}.svc.cluster.local", "10.99.3.10"
P_HOST, P_VIP = f"pagent.{NS_C}.svc.cluster.local", "10.99.3.11"
INTRUDER = f"cluster.local/ns/{NS_C}/sa/intruder-sa"


def test_mesh_agent_and_pilot_agent_vms_call_each_other_with_mtls(
        istiod: Istiod, mesh_agent_vm: MeshAgentFactory, pilot_agent_vm: PilotAgentFactory,
        istio_config: Callable[[str, str], None]) -> None:
    m_labels, p_labels = {"app": "magent"}, {"app": "pagent"}
    mesh = mesh_agent_vm("minter", NS_C, "magent-sa", labels=m_labels, capture=True)
    pilot = pilot_agent_vm("pinter", NS_C, "pagent-sa", labels=p_labels, start=False)
    istio_config("c-se-m.yaml", resources.service_entry("magent", NS_C, M_HOST, M_VIP, PORT,
                                                        m_labels))
    istio_config("c-se-p.yaml", resources.service_entry("pagent", NS_C, P_HOST, P_VIP, PORT,
                                                        p_labels))
    istio_config("c-we-m.yaml", resources.workload_entry("magent-1", NS_C, mesh.vm.ip,
                                                         "magent-sa", m_labels))
    istio_config("c-we-p.yaml", resources.workload_entry("pagent-1", NS_C, pilot.vm.ip,
                                                         "pagent-sa", p_labels))
    istio_config("c-strict.yaml", resources.peer_authentication_strict("strict", NS_C))
    istio_config("c-deny-m.yaml", resources.deny_principals("deny-m", NS_C, m_labels,
                                                            [INTRUDER]))
    istio_config("c-deny-p.yaml", resources.deny_principals("deny-p", NS_C, p_labels,
                                                            [INTRUDER]))
    for kind, name in (("WorkloadEntry", "magent-1"), ("WorkloadEntry", "pagent-1"),
                       ("AuthorizationPolicy", "deny-m"), ("AuthorizationPolicy", "deny-p")):
        istiod.wait_config(kind, NS_C, name)
    mesh.vm.set_hosts(f"{P_VIP} {P_HOST}\n")  # pilot-agent's DNS proxy answers its own
    mesh.serve(PORT, "magent")
    pilot.serve(PORT, "pagent")
    mesh.start()
    pilot.start()
    mesh.wait_ready()
    pilot.wait_ready()
    p_id = f"spiffe://cluster.local/ns/{NS_C}/sa/pagent-sa"

    # mesh-agent -> pilot-agent.
    body = json.loads(mesh.vm.call_until(f"http://{P_HOST}:{PORT}/from-mesh", 200))
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert body["app"] == "pagent" and f"URI={mesh.spiffe_id}" in xfcc, body
    assert f"By={p_id}" in xfcc, body
    received = wait_entry(lambda: json_lines(pilot.log_text()), "/from-mesh")
    assert received["peer"] == mesh.spiffe_id and received["tls"].startswith("TLSv1"), received
    assert wait_entry(mesh.access_log, "/from-mesh")["upstream_peer"] == p_id

    # pilot-agent -> mesh-agent (the name from pilot-agent's own DNS proxy).
    body = json.loads(pilot.vm.call_until(f"http://{M_HOST}:{PORT}/from-pilot", 200))
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert body["app"] == "magent" and f"URI={p_id}" in xfcc, body
    assert f"By={mesh.spiffe_id}" in xfcc, body
    assert body["peer"] == "127.0.0.6", body
    received = wait_entry(mesh.access_log, "/from-pilot")
    assert received["peer"] == p_id and received["tls"].startswith("TLSv1"), received

    # A third identity, denied by the AuthorizationPolicies, is refused by both sidecars.
    intruder = pilot_agent_vm("cintruder", NS_C, "intruder-sa")
    assert "RBAC" in intruder.vm.call_until(f"http://{M_HOST}:{PORT}/intrude", 403)
    assert "RBAC" in intruder.vm.call_until(f"http://{P_HOST}:{PORT}/intrude", 403)
    denied = wait_entry(mesh.access_log, "/intrude")
    assert denied["code"] == 403 and denied["peer"] == f"spiffe://{INTRUDER}", denied
    # ...while the mesh-agent VM is still allowed.
    mesh.vm.call_until(f"http://{P_HOST}:{PORT}/again", 200)
    assert mesh.stop() == 0
