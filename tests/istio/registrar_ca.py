"""mesh-registrar as the CA of Istio's own pilot-agent (test d's harness).

The registrar signs with an intermediate of its own issued by the mesh's root
(istiod's plug-in root), so what it signs chains to the same root as istiod's
certificates: istiod accepts the pilot-agent's certificate on XDS and a
mesh-agent VM (certificates from istiod) accepts it as a peer. It runs inside
istiod's namespace on the bridge address, where every VM reaches it.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registrar.ca.authority import load_signing_key, pem
from registrar.ca.bootstrap import ca_certificate, key_pem, new_key
from tests.fixtures.istiod import Istiod
from tests.fixtures.registrar import Group, RegistrarProcess
from tests.istio.pilot_agent import PROXY_UID, PilotAgentVm

REPO = Path(__file__).resolve().parents[2]
API_PORT, CA_PORT = 9443, 15443
INTERMEDIATE_NAME = "mesh-registrar CA for pilot-agent VMs"


def registrar_intermediate(istiod: Istiod, out: Path) -> x509.Certificate:
    """A plug-in CA directory: a new intermediate signed by istiod's root key."""
    root = x509.load_pem_x509_certificate((istiod.ca_dir / "root-cert.pem").read_bytes())
    root_key = load_signing_key(istiod.ca_dir / "root-key.pem")
    key = new_key()
    cert = ca_certificate(INTERMEDIATE_NAME, key=key, issuer=root, issuer_key=root_key,
                          ttl=dt.timedelta(days=30), path_length=0,
                          trust_domain=istiod.trust_domain)
    out.mkdir(mode=0o700)
    (out / "ca-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "ca-key.pem").write_bytes(key_pem(key))
    (out / "root-cert.pem").write_bytes(pem([root]).encode())
    (out / "cert-chain.pem").write_bytes(pem([cert, root]).encode())
    return cert


def start_registrar(istiod: Istiod, base: Path, groups: dict[str, Group]) -> RegistrarProcess:
    registrar_intermediate(istiod, base / "plugin-ca")
    url = f"https://{istiod.address}:{API_PORT}"
    registrar = RegistrarProcess(
        base / "registrar", trust_domain=istiod.trust_domain, groups=groups,
        host=istiod.address, port=API_PORT, prefix=["ip", "netns", "exec", istiod.netns],
        server_names=[istiod.address], import_ca=base / "plugin-ca",
        config={"oidc": {"issuer": url},
                "istio_ca": {"listen": f"{istiod.address}:{CA_PORT}"}})
    (base / "registrar").mkdir(mode=0o755)
    registrar.start(timeout=60)
    return registrar


def use_registrar_ca(pilot: PilotAgentVm, registrar: RegistrarProcess, group: str,
                     work: Path) -> None:
    """What an operator does on a pilot-agent VM: CA_ADDR names the registrar's CA
    port, root-cert.pem is the registrar's trust bundle, and istio-token is a JWT
    from the registrar (fetched here from inside the VM after a join-token
    attestation, as mesh-agent's token_source: registrar does)."""
    env = pilot.root / "var" / "lib" / "istio" / "envoy" / "cluster.env"
    with env.open("a") as f:
        f.write(f"CA_ADDR='{registrar.host}:{CA_PORT}'\n")
    (pilot.certs / "root-cert.pem").write_bytes(registrar.ca_file.read_bytes())
    work.mkdir(mode=0o700)
    (work / "bootstrap-token").write_text(registrar.create_token(group, "10m"))
    token = pilot.root / "var" / "run" / "secrets" / "tokens" / "istio-token"
    result = subprocess.run(
        [*pilot.vm.prefix, sys.executable, "-m", "tests.istio.oidc_calls", "token",
         "--state", str(work / "state"), "--registrar", registrar.url,
         "--ca", str(registrar.ca_file), "--token-file", str(work / "bootstrap-token"),
         "--out", str(token)], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    if result.returncode != 0:
        raise AssertionError(f"no token from the registrar: {result.stderr[-3000:]}")
    os.chown(token, PROXY_UID, PROXY_UID)
