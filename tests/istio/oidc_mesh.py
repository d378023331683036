"""A kube-less istiod whose ``JWT_RULE`` names mesh-registrar's OIDC issuer, and
mesh-agent VMs that join it with no istio-token (``istio.token_source: registrar``).

One istiod per module that uses it: istiod takes a single ``JWT_RULE`` (one
issuer; ``pilot/pkg/bootstrap/options.go``), and the session istiod's names the
tests' own token issuer. The registrar runs inside istiod's namespace on the
bridge address, so istiod and every VM reach it at ``https://10.88.0.1:8443``;
istiod fetches the JWKS over HTTPS and trusts the registrar's CA through
``SSL_CERT_FILE`` (Go's system trust store override).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.cloud_pki import CloudPki
from tests.fixtures.istiod import Istiod
from tests.fixtures.registrar import Group, RegistrarProcess
from tests.istio.mesh_agent import PROXY, MeshAgentVm
from tests.istio.network import ISTIOD_IP, MeshNetwork, VmNamespace, sh

REPO = Path(__file__).resolve().parents[2]
REGISTRAR_PORT = 8443
REGISTRAR_URL = f"https://{ISTIOD_IP}:{REGISTRAR_PORT}"
ACCOUNT = "123456789012"
NAMESPACE, SERVICE_ACCOUNT = "vm-app", "web-sa"
GROUPS = {"web": Group(NAMESPACE, SERVICE_ACCOUNT, 3600), "other": Group("vm-other", "o-sa"),
          # the same identity with 20 s registrar certificates (keep-alive test)
          "short": Group(NAMESPACE, SERVICE_ACCOUNT, 20)}


def jwt_rule() -> dict[str, Any]:
    return {"issuer": REGISTRAR_URL, "jwks_uri": f"{REGISTRAR_URL}/.well-known/jwks.json",
            "audiences": ["istio-ca"]}


def registrar_config(pki: CloudPki) -> dict[str, Any]:
    return {
        # The rotation test asks for a token every ~0.5 s per VM.
        "oidc": {"issuer": REGISTRAR_URL, "audiences": ["istio-ca", "other"],
                 "per_workload": {"per_second": 100, "burst": 100}},
        "evidence": {"join_token": {}, "aws": {
            "cert_dir": str(pki.root / "aws"), "max_instance_age": "1h",
            "allowed_accounts": [ACCOUNT],
            "groups": [{"group": "web", "match": {"account_id": ACCOUNT}}]}},
    }


@dataclass
class OidcMesh:
    istiod: Istiod
    registrar: RegistrarProcess
    pki: CloudPki
    base: Path
    istiod_start_seconds: float

    @property
    def network(self) -> MeshNetwork:
        return self.istiod.network

    def key_dir(self) -> Path:
        return self.registrar.state_dir / "oidc"


def start_mesh(base: Path, binaries: Any, network: MeshNetwork) -> OidcMesh:
    pki = CloudPki.create(_mkdir(base / "cloud-pki"))
    registrar = RegistrarProcess(
        _mkdir(base / "registrar"), groups=GROUPS, host=ISTIOD_IP, port=REGISTRAR_PORT,
        prefix=["ip", "netns", "exec", network.istiod_ns], server_names=[ISTIOD_IP],
        config=registrar_config(pki))
    registrar.start()
    started = time.monotonic()
    istiod = Istiod(binaries, _mkdir(base / "istiod"), network, jwt_rule=jwt_rule(),
                    extra_env={"SSL_CERT_FILE": str(registrar.ca_file)})
    istiod.start()
    return OidcMesh(istiod, registrar, pki, base, time.monotonic() - started)


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    return path


class RegistrarTokenVm(MeshAgentVm):
    """mesh-agent in Istio mode with ``token_source: registrar``: no istio-token file."""

    def __init__(self, mesh: OidcMesh, vm: VmNamespace, base: Path, *,
                 attestation: dict[str, Any], istio_extra: dict[str, Any] | None = None,
                 ) -> None:
        files = mesh.istiod.vm_files("vm-oidc", NAMESPACE, SERVICE_ACCOUNT, vm.ip,
                                     token="unused.jwt.token")
        super().__init__(mesh.istiod, vm, base, files)
        (self.istio_dir / "istio-token").unlink()  # nothing secret on this VM
        self.mesh = mesh
        config: dict[str, Any] = {
            "mesh": {"type": "istio"},
            "istio": {"dir": str(self.istio_dir), "cert_ttl": "24h", "timeout": "5s",
                      "token_source": "registrar", **(istio_extra or {})},
            "registrar": {"url": REGISTRAR_URL, "ca_file": str(mesh.registrar.ca_file)},
            "attestation": attestation,
            "state_dir": str(self.state_dir),
            "rotation": {"min_backoff": "200ms", "max_backoff": "2s"},
            "status": {"enabled": True, "listen": "127.0.0.1:15020"},
            "sidecar": {"enabled": True, "envoy_path": str(_envoy()), **PROXY},
            "capture": {"enabled": False, **PROXY},
        }
        self.config_path.write_text(yaml.safe_dump(config))


def _envoy() -> Path:
    from tests.istio.binaries import envoy_binary
    return envoy_binary()


def serve_ec2_metadata(vm: VmNamespace, pki: CloudPki, instance_id: str) -> subprocess.Popen[str]:
    """The fake EC2 metadata service at 169.254.169.254 inside the VM (today's fake)."""
    sh("ip", "-n", vm.name, "addr", "add", "169.254.169.254/32", "dev", "lo")
    proc = subprocess.Popen(
        [*vm.prefix, sys.executable, "-m", "tests.fakes.metadata_main", "--cloud", "aws",
         "--pki", str(pki.root), "--listen", "169.254.169.254:80", "--private-ip", vm.ip,
         "--instance-id", instance_id], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"fake EC2 metadata failed: {proc.communicate()[1]}")
    return proc


def in_vm(vm: VmNamespace, *args: str, stdin: str = "", timeout: float = 120) -> Any:
    """``python -m tests.istio.oidc_calls ARGS`` inside the VM; its JSON answer."""
    import json
    result = subprocess.run([*vm.prefix, sys.executable, "-m", "tests.istio.oidc_calls", *args],
                            input=stdin, capture_output=True, text=True, timeout=timeout,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    if result.returncode != 0:
        raise AssertionError(f"oidc_calls {args[0]} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
