"""No secret on the VM: mesh-registrar vouches for the VM to a real istiod.

istiod (kube-less, plug-in CA) authenticates first CSRs with ``JWT_RULE``
pointing at mesh-registrar's JWKS. A VM namespace holds istioctl's files minus
istio-token; the agent attests to mesh-registrar (fake EC2 metadata, or a join
token), gets a JWT for its own identity, and with it its certificate from istiod;
Envoy then takes istiod's config. Then the refusals, each seen in istiod's log
and reported by the agent, and signing-key rotation under load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.istio.binaries import istio_binaries
from tests.istio.network import MeshNetwork
from tests.istio.oidc_mesh import (
    NAMESPACE,
    REGISTRAR_URL,
    SERVICE_ACCOUNT,
    OidcMesh,
    RegistrarTokenVm,
    in_vm,
    serve_ec2_metadata,
    start_mesh,
)

pytestmark = [pytest.mark.istio, pytest.mark.netns]
SPIFFE = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}"
SUB = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"


@pytest.fixture(scope="module")
def mesh() -> Iterator[OidcMesh]:
    if os.geteuid() != 0:
        pytest.fail("Istio tests need root (network namespaces); CI is root: not skipping")
    base = Path(tempfile.mkdtemp(prefix=f"mesh-oidc-{os.getpid()}-"))
    base.chmod(0o755)
    network = MeshNetwork()
    made: OidcMesh | None = None
    try:
        made = start_mesh(base, istio_binaries(), network)
        print(f"\ndedicated istiod ready in {made.istiod_start_seconds:.1f}s")
        yield made
    finally:
        if made is not None:
            made.istiod.close()
            made.registrar.kill()
        network.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def vms(mesh: OidcMesh) -> Iterator[Any]:
    made: list[RegistrarTokenVm] = []
    procs: list[Any] = []

    def make(label: str, *, ec2: bool = False, join_token: bool = False,
             istio_extra: dict[str, Any] | None = None, group: str = "web") -> RegistrarTokenVm:
        vm = mesh.network.add_vm(label)
        base = mesh.base / f"vm-{label}-{time.monotonic_ns()}"
        base.mkdir(mode=0o755)
        if ec2:
            procs.append(serve_ec2_metadata(vm, mesh.pki, f"i-{label}{os.getpid():x}"[:19]))
            attestation: dict[str, Any] = {"method": "aws"}
        else:
            token_file = base / "bootstrap-token"
            if join_token:
                token_file.write_text(mesh.registrar.create_token(group, "10m") + "\n")
                token_file.chmod(0o600)
            attestation = {"method": "token", "token_file": str(token_file)}
        agent = RegistrarTokenVm(mesh, vm, base, attestation=attestation,
                                 istio_extra=istio_extra)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        mesh.network.remove_vm(agent.vm)
    for proc in procs:
        proc.kill()
        proc.wait()


def _spiffe(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _joined(mesh: OidcMesh, agent: RegistrarTokenVm) -> None:
    """Certificate from istiod's CA for the group's identity; Envoy connected to istiod."""
    assert not (agent.istio_dir / "istio-token").exists()
    chain = agent.chain()
    assert _spiffe(chain[0]) == [SPIFFE]
    root = x509.load_pem_x509_certificate(mesh.istiod.root_cert.read_bytes())
    for child, parent in zip(chain, [*chain[1:], root], strict=False):
        child.verify_directly_issued_by(parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent.stat("control_plane.connected_state") != 1:
        time.sleep(0.5)
    assert agent.stat("control_plane.connected_state") == 1, agent.log_text()[-3000:]
    _, body = agent.admin("/config_dump")
    kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
    listeners = {e["name"] for e in kinds["ListenersConfigDump"].get("dynamic_listeners", [])}
    assert "virtualOutbound" in listeners
    status = agent.status()
    assert status["attestor"] == "registrar"
    # The registrar issued a token for exactly this identity; the token is in no log.
    registrar_log = mesh.registrar.log_text()
    assert f"oidc_token ok spiffe_id=spiffe://example.org/ns/{NAMESPACE}/sa/" \
           f"{SERVICE_ACCOUNT} subject={SUB}" in registrar_log
    for text in (registrar_log, agent.log_text(), mesh.istiod.log_text()):
        assert "eyJ" not in text  # no JWT (base64 of '{"') in any log


def test_ec2_vm_with_no_secret_joins_istiod(mesh: OidcMesh, vms: Any) -> None:
    agent = vms("ec2", ec2=True)
    agent.start()
    agent.wait_ready()
    _joined(mesh, agent)
    rows = json.loads(mesh.registrar.cli("workloads", "list", "--json").stdout)
    assert any(r["evidence_type"] == "aws" and r["state"] == "active" for r in rows)


def test_join_token_vm_joins_istiod_and_spends_the_token(mesh: OidcMesh, vms: Any) -> None:
    agent = vms("jt", join_token=True)
    token_file = agent.base / "bootstrap-token"
    assert token_file.exists()
    agent.start()
    agent.wait_ready()
    _joined(mesh, agent)
    assert not token_file.exists()  # one-time: gone once the registrar identity is stored
    ident = agent.state_dir / "registrar-identity"
    assert oct((ident / "key.pem").stat().st_mode & 0o777) == "0o600"


def test_registrar_identity_is_renewed_while_the_vm_runs(mesh: OidcMesh, vms: Any) -> None:
    """istiod renewals need no token, so the registrar certificate would lapse between
    tokens; the agent renews it at half-life (20 s certificates here) so a later token
    request needs no new evidence (the join token is spent)."""
    agent = vms("alive", join_token=True, group="short")
    agent.start()
    agent.wait_ready()
    chain = agent.state_dir / "registrar-identity" / "cert-chain.pem"
    first = x509.load_pem_x509_certificate(chain.read_bytes())
    deadline = time.monotonic() + 45
    renewed = 0
    while time.monotonic() < deadline and renewed < 2:
        leaf = x509.load_pem_x509_certificate(chain.read_bytes())
        if leaf.serial_number != first.serial_number:
            renewed += 1
            first = leaf
        time.sleep(0.5)
    assert renewed >= 2, agent.log_text()[-3000:]
    assert leaf.not_valid_after_utc.timestamp() > time.time()
    assert agent.proc is not None and agent.proc.poll() is None


def test_no_evidence_is_reported_clearly(mesh: OidcMesh, vms: Any) -> None:
    agent = vms("none")  # no join token, no cloud metadata, no istio-token
    agent.start()
    assert agent.proc is not None
    assert agent.proc.wait(60) == 79
    assert "no evidence for mesh-registrar" in agent.log_text() or \
        "no join token" in agent.log_text(), agent.log_text()[-2000:]


def test_wrong_audience_is_refused_by_istiod_and_reported(mesh: OidcMesh, vms: Any) -> None:
    """The registrar issues aud 'other' (allowed by its config); istiod's JWT_RULE only
    takes istio-ca: istiod refuses, the agent retries with fresh tokens and says why."""
    offset = len(mesh.istiod.log_text())
    agent = vms("aud", join_token=True, istio_extra={"token_audience": "other"})
    agent.start()
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = agent.status()
        except (AssertionError, OSError, ValueError):
            status = {}
        if status.get("failures", {}).get("registrar_token_rejected", 0) >= 2:
            break  # refused, and asked again with a fresh token
        time.sleep(0.5)
    assert status.get("failures", {}).get("registrar_token_rejected", 0) >= 2, \
        agent.log_text()[-3000:]
    assert "JWT_RULE" in str(status.get("last_error")), status
    # Each attempt asked the registrar again: a fresh token, not a cached one.
    assert mesh.registrar.log_text().count(" aud=other ") >= 2
    assert agent.get("http://127.0.0.1:15020/ready")[0] != 200
    assert "invalid audiences [other]" in mesh.istiod.log_text()[offset:]
    assert "JWT_RULE" in agent.log_text()


def _registrar_key(mesh: OidcMesh, kid: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((mesh.key_dir() / f"{kid}.pem").read_bytes(),
                                             password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _signing_kid(mesh: OidcMesh) -> str:
    index = json.loads((mesh.key_dir() / "keys.json").read_text())
    return str(next(k["kid"] for k in index["keys"] if k["retired_at"] is None))


def _forge(key: rsa.RSAPrivateKey, kid: str, *, sub: str = SUB, aud: str = "istio-ca",
           exp_in: float = 600) -> str:
    now = int(time.time())
    return jwt.encode({"iss": REGISTRAR_URL, "sub": sub, "aud": [aud], "iat": now - 5,
                       "nbf": now - 5, "exp": int(now + exp_in)}, key, algorithm="RS256",
                      headers={"kid": kid})


def _present(mesh: OidcMesh, agent: RegistrarTokenVm, token: str) -> dict[str, Any]:
    return dict(in_vm(agent.vm, "present", "--dir", str(agent.istio_dir), stdin=token))


def _refused(mesh: OidcMesh, agent: RegistrarTokenVm, token: str, cause: str) -> None:
    offset = len(mesh.istiod.log_text())
    result = _present(mesh, agent, token)
    assert not result["ok"], result
    assert result["reason"] == "registrar_token_rejected", result
    assert "JWT_RULE" in result["message"]
    deadline = time.monotonic() + 5
    while cause not in mesh.istiod.log_text()[offset:] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cause in mesh.istiod.log_text()[offset:], mesh.istiod.log_text()[offset:][-2000:]


def test_refusals_by_istiod(mesh: OidcMesh, vms: Any) -> None:
    agent = vms("refuse", join_token=True)  # only for its files and namespace
    kid = _signing_kid(mesh)
    key = _registrar_key(mesh, kid)
    # Control: a well-formed token signed by the registrar's key is accepted.
    assert _present(mesh, agent, _forge(key, kid))["ok"]
    # Expired (a replayed old token).
    _refused(mesh, agent, _forge(key, kid, exp_in=-60), "token is expired")
    # Wrong audience.
    _refused(mesh, agent, _forge(key, kid, aud="kubernetes"), "invalid audiences")
    # Another identity, from anyone but the registrar (the registrar itself refuses
    # to issue it: tests/registrar/oidc/test_issuer.py::test_refusals).
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _refused(mesh, agent, _forge(stranger, "stranger", sub="system:serviceaccount:vm-other:o-sa"),
             "failed to verify")
    # A key removed from the JWKS: rotate, then let the old key's overlap end (its
    # retirement moved into the past: the time a real overlap takes), make istiod
    # fetch the JWKS again with a token of the new key, then present the old key's.
    mesh.registrar.cli("oidc", "rotate")
    new_kid = _signing_kid(mesh)
    index_path = mesh.key_dir() / "keys.json"
    index = json.loads(index_path.read_text())
    for entry in index["keys"]:
        if entry["kid"] == kid:
            entry["retired_at"] = time.time() - 7200
    index_path.write_text(json.dumps(index))
    assert _present(mesh, agent, _forge(_registrar_key(mesh, new_kid), new_kid))["ok"]
    _refused(mesh, agent, _forge(key, kid), "failed to verify")


def test_signing_key_rotation_while_vms_get_tokens(mesh: OidcMesh, vms: Any) -> None:
    """Two VMs get token after token (each presented up to 1 s after it was issued)
    while the signing key rotates three times: not one refusal."""
    import subprocess
    import sys
    loops = []
    for label in ("rot1", "rot2"):
        agent = vms(label, join_token=True)
        loops.append(subprocess.Popen(
            [*agent.vm.prefix, sys.executable, "-m", "tests.istio.oidc_calls", "loop",
             "--dir", str(agent.istio_dir), "--state", str(agent.state_dir),
             "--registrar", REGISTRAR_URL, "--ca", str(mesh.registrar.ca_file),
             "--token-file", str(agent.base / "bootstrap-token"), "--seconds", "20"],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}))
    for proc in loops:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    kids = {_signing_kid(mesh)}
    for _ in range(3):
        time.sleep(3.0)
        mesh.registrar.cli("oidc", "rotate")
        kids.add(_signing_kid(mesh))
    results = []
    for proc in loops:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["failures"] == [] for r in results), results
    assert all(r["ok"] >= 5 for r in results), results
    used = set().union(*(r["kids"] for r in results))
    assert len(used & kids) >= 3, (used, kids, results)  # tokens of several keys accepted
