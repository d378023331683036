"""d. pilot-agent with mesh-registrar as its CA.

Istio's own pilot-agent, started as Istio's VM package starts it, with
``CA_ADDR`` naming the registrar's CA port, root-cert.pem the registrar's trust
bundle and a registrar JWT as istio-token, gets its workload certificate from
mesh-registrar (issued by the registrar's intermediate, the right SPIFFE ID);
Envoy serves it; and a mesh-agent VM (certificates from istiod) accepts it as
a peer: calls both ways succeed over mTLS under STRICT, each side logging the
other's SPIFFE ID.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.fixtures.istiod import Istiod
from tests.fixtures.registrar import Group, RegistrarProcess
from tests.istio import resources
from tests.istio.conftest import MeshAgentFactory, PilotAgentFactory
from tests.istio.registrar_ca import INTERMEDIATE_NAME, start_registrar, use_registrar_ca
from tests.istio.test_mesh_traffic import istio_config, json_lines, wait_entry

pytestmark = [pytest.mark.istio, pytest.mark.netns]
__all__ = ["istio_config"]  # the fixture, imported for this module's tests

PORT = 8080
NS = "vm-regca"
M_HOST, M_VIP = f"mregca.{NS}.svc.cluster.local", "10.99.4.10"
P_HOST, P_VIP = f"pregca.{NS}.svc.cluster.local", "10.99.4.11"
P_ID = f"spiffe://cluster.local/ns/{NS}/sa/pregca-sa"


@pytest.fixture
def registrar(istiod: Istiod) -> Iterator[RegistrarProcess]:
    base = Path(tempfile.mkdtemp(prefix="mesh-regca-"))
    base.chmod(0o755)
    made = None
    try:
        # Short certificates: pilot-agent (asking for its default 24 h, capped to these
        # 2 min) renews within the test, over mTLS with the certificate it holds.
        made = start_registrar(istiod, base, {"pilot": Group(NS, "pregca-sa", 120)})
        yield made
    finally:
        if made is not None:
            made.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_pilot_agent_gets_its_certificate_from_the_registrar_and_a_mesh_agent_accepts_it(
        istiod: Istiod, registrar: RegistrarProcess, mesh_agent_vm: MeshAgentFactory,
        pilot_agent_vm: PilotAgentFactory, istio_config: Callable[[str, str], None],
        tmp_path: Path) -> None:
    m_labels, p_labels = {"app": "mregca"}, {"app": "pregca"}
    mesh = mesh_agent_vm("mregca", NS, "mregca-sa", labels=m_labels, capture=True)
    pilot = pilot_agent_vm("pregca", NS, "pregca-sa", labels=p_labels, capture=False,
                           start=False)
    use_registrar_ca(pilot, registrar, "pilot", tmp_path / "pilot-enrol")
    pilot.capture()  # after the token's fetch, which Istio's capture would redirect
    for name, text in (
            ("d-se-m.yaml", resources.service_entry("mregca", NS, M_HOST, M_VIP, PORT,
                                                    m_labels)),
            ("d-se-p.yaml", resources.service_entry("pregca", NS, P_HOST, P_VIP, PORT,
                                                    p_labels)),
            ("d-we-m.yaml", resources.workload_entry("mregca-1", NS, mesh.vm.ip, "mregca-sa",
                                                     m_labels)),
            ("d-we-p.yaml", resources.workload_entry("pregca-1", NS, pilot.vm.ip,
                                                     "pregca-sa", p_labels)),
            ("d-strict.yaml", resources.peer_authentication_strict("strict", NS))):
        istio_config(name, text)
    for kind, name in (("WorkloadEntry", "mregca-1"), ("WorkloadEntry", "pregca-1"),
                       ("PeerAuthentication", "strict")):
        istiod.wait_config(kind, NS, name)
    mesh.vm.set_hosts(f"{P_VIP} {P_HOST}\n")
    mesh.serve(PORT, "mregca")
    pilot.serve(PORT, "pregca")
    mesh.start()
    pilot.start()
    mesh.wait_ready()
    pilot.wait_ready(timeout=120)

    # pilot-agent's certificate (OUTPUT_CERTS) is the registrar's: its intermediate
    # signed it, for the identity of the VM's group, and Envoy serves that one.
    leaf = served_leaf(pilot)
    ours = x509.load_pem_x509_certificate((registrar.state_dir / "ca-cert.pem").read_bytes())
    assert ours.subject.rfc4514_string().startswith(f"CN={INTERMEDIATE_NAME},")
    istiods = x509.load_pem_x509_certificate((istiod.ca_dir / "ca-cert.pem").read_bytes())
    assert leaf.issuer == ours.subject != istiods.subject
    leaf.verify_directly_issued_by(ours)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [P_ID]
    log = registrar.log_text()
    assert f"istio_ca ok spiffe_id={P_ID} by=jwt" in log, log[-3000:]
    token = (pilot.root / "var" / "run" / "secrets" / "tokens" / "istio-token").read_text()
    assert token.split(".")[2] not in log
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.total_seconds() <= 120 + 11  # pilot-agent asked 24 h: capped

    # pilot-agent -> mesh-agent: the mesh-agent's sidecar accepts the registrar's
    # certificate as a peer (STRICT mTLS) and logs its SPIFFE ID.
    body = json.loads(pilot.vm.call_until(f"http://{M_HOST}:{PORT}/from-pilot", 200))
    xfcc = body["headers"].get("x-forwarded-client-cert", "")
    assert body["app"] == "mregca" and f"URI={P_ID}" in xfcc, body
    received = wait_entry(mesh.access_log, "/from-pilot")
    assert received["peer"] == P_ID and received["tls"].startswith("TLSv1"), received

    # mesh-agent -> pilot-agent: the pilot-agent VM serves with the same certificate.
    body = json.loads(mesh.vm.call_until(f"http://{P_HOST}:{PORT}/from-mesh", 200))
    assert body["app"] == "pregca", body
    assert wait_entry(mesh.access_log, "/from-mesh")["upstream_peer"] == P_ID
    received = wait_entry(lambda: json_lines(pilot.log_text()), "/from-mesh")
    assert received["peer"] == mesh.spiffe_id, received

    # Renewal: pilot-agent renews with its token while the registrar takes it; once
    # the token has expired (it never outlives the 2-minute certificate that fetched
    # it) pilot-agent presents the certificate it holds (PROV_CERT), which the
    # registrar renews as a current mesh certificate.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and f"istio_ca ok spiffe_id={P_ID} by=cert" not in (
            registrar.log_text()):
        time.sleep(1)
    assert f"istio_ca ok spiffe_id={P_ID} by=cert" in registrar.log_text(), \
        registrar.log_text()[-3000:]
    renewed = served_leaf(pilot)
    assert renewed.serial_number != leaf.serial_number and renewed.issuer == ours.subject
    pilot.vm.call_until(f"http://{M_HOST}:{PORT}/after-renewal", 200)
    assert wait_entry(mesh.access_log, "/after-renewal")["peer"] == P_ID
    assert mesh.stop() == 0


def served_leaf(pilot: Any, timeout: float = 30) -> x509.Certificate:
    """The leaf pilot-agent wrote (OUTPUT_CERTS) once Envoy serves the same one (a
    rotation may land between the two reads: read again)."""
    deadline = time.monotonic() + timeout
    while True:
        leaf = x509.load_pem_x509_certificates((pilot.certs / "cert-chain.pem").read_bytes())[0]
        status, certs = pilot.admin("/certs")
        serials = {c["serial_number"].lower().lstrip("0")
                   for entry in (json.loads(certs)["certificates"] if status == 200 else [])
                   for c in entry.get("cert_chain", [])}
        if format(leaf.serial_number, "x") in serials:
            return leaf
        if time.monotonic() > deadline:
            raise AssertionError(f"Envoy does not serve {leaf.serial_number:x}: {certs[:2000]}")
        time.sleep(0.5)
