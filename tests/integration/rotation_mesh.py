"""Two mesh VMs for the CA rotation test and benchmark: a real registrar (in the
peer's namespace), a real `mesh-agent run` with its Envoy and capture on each
VM, an app behind each, and continuous requests both ways through both Envoys.

Agents pin a *copy* of the registrar's first root (as a real VM's
``registrar-ca.pem``), so after the rotation they can reach the registrar only
through the bundle they were handed, never through the registrar's own file.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.fixtures.agent import AgentProcess
from tests.fixtures.registrar import RegistrarProcess, free_port
from tests.sidecar.apps import EchoApp
from tests.sidecar.netns import HostPair

TD = "example.org"
VM_ID = f"spiffe://{TD}/ns/shop/sa/vm-app"
PEER_ID = f"spiffe://{TD}/ns/shop/sa/frontend"
HOLDER_ID = f"spiffe://{TD}/ns/shop/sa/holder"
REPO = Path(__file__).resolve().parents[2]
VM_PORT, PEER_PORT = 9090, 8080


def _dataplane(envoy: Path, *, app_port: int, allowed: str, backend: str,
               outbound: dict[str, Any], poll: str) -> dict[str, Any]:
    return {
        "registrar": {"bundle_poll_interval": poll},
        "proxy": {"uid": 1337, "gid": 1337},
        "sidecar": {"enabled": True, "envoy_path": str(envoy), "app_ports": [app_port],
                    "allowed_peers": [allowed], "drain_time": "1s",
                    "outbound_services": outbound},
        "capture": {"enabled": True, "backend": backend, "inbound_ports": [app_port]},
        "log_level": "info",
    }


@dataclass
class Traffic:
    """One generator process per direction; counts come back when stopped."""

    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stop(self) -> dict[str, dict[str, Any]]:
        for name, proc, out in self.procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            self.results[name] = json.loads(out.read_text())
        return self.results

    @property
    def ok(self) -> int:
        return sum(r["ok"] for r in self.results.values())

    @property
    def failed(self) -> int:
        return sum(r["failed"] for r in self.results.values())


class RotationMesh:
    def __init__(self, hosts: HostPair, make_registrar: Callable[..., RegistrarProcess],
                 envoy: Path, state_dirs: Callable[[str], Path], *, cert_ttl: float = 30.0,
                 poll: str = "2s") -> None:
        self.hosts = hosts
        self.registrar = make_registrar(
            trust_domain=TD, host=hosts.peer.address, port=free_port(),
            prefix=["ip", "netns", "exec", hosts.peer.name],
            groups={"vm": ("shop", "vm-app", cert_ttl),
                    "frontend": ("shop", "frontend", cert_ttl),
                    "holder": ("shop", "holder", 600), "light": ("shop", "light", cert_ttl)})
        self.apps = [EchoApp(hosts.vm.name, VM_PORT), EchoApp(hosts.peer.name, PEER_PORT)]
        self.base = state_dirs("rotation")
        anchor = self.base / "registrar-ca.pem"
        self.anchor = anchor
        self._traffic: list[Traffic] = []
        shutil.copyfile(self.registrar.ca_file, anchor)
        self.vm = AgentProcess(
            state_dirs("vm"), self.registrar, token=self.registrar.create_token("vm"),
            netns=hosts.vm.name,
            extra=_dataplane(envoy, app_port=VM_PORT, allowed=PEER_ID, backend="iptables-nft",
                             poll=poll, outbound={"frontend": {
                                 "address": f"{hosts.peer.address}:{PEER_PORT}",
                                 "spiffe_id": PEER_ID}}))
        self.peer = AgentProcess(
            state_dirs("peer"), self.registrar, token=self.registrar.create_token("frontend"),
            netns=hosts.peer.name,
            extra=_dataplane(envoy, app_port=PEER_PORT, allowed=VM_ID, backend="nftables",
                             poll=poll, outbound={"vm-app": {
                                 "address": f"{hosts.vm.address}:{VM_PORT}",
                                 "spiffe_id": VM_ID}}))
        for agent in (self.vm, self.peer):
            agent.config["registrar"]["ca_file"] = str(anchor)
            agent.write_config()

    @property
    def agents(self) -> tuple[AgentProcess, AgentProcess]:
        return self.vm, self.peer

    def start(self) -> None:
        for app in self.apps:
            app.start()
        for agent in self.agents:
            agent.start()
        for agent in self.agents:
            agent.wait_ready(90)

    def traffic(self, interval: float = 0.05) -> Traffic:
        traffic = Traffic()
        self._traffic.append(traffic)
        for name, ns, target, port in (
                ("peer->vm", self.hosts.peer.name, self.hosts.vm.address, VM_PORT),
                ("vm->peer", self.hosts.vm.name, self.hosts.peer.address, PEER_PORT)):
            out = self.base / f"traffic-{name.replace('->', '-')}.json"
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.traffic",
                 target, str(port), str(out), str(interval)], cwd=REPO)
            traffic.procs.append((name, proc, out))
        return traffic

    def ca(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.registrar.cli("ca", *args, "--json", check=False)

    def until_accepted(self, *args: str, timeout: float) -> tuple[float, list[str]]:
        """Run ``ca ARGS`` until it succeeds; (seconds it took, the refusal reasons)."""
        started = time.monotonic()
        reasons: list[str] = []
        while True:
            out = self.ca(*args)
            if out.returncode == 0:
                return time.monotonic() - started, reasons
            assert out.returncode == 65, out
            reasons.append(json.loads(out.stdout)["refused"])
            assert time.monotonic() - started < timeout, (args, out.stdout, out.stderr)
            time.sleep(0.5)

    def in_registrar_ns(self, *argv: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.hosts.peer.name, sys.executable,
                                 *argv], cwd=REPO)

    def hold(self) -> None:
        """A workload that attests now and never renews (a VM switched off mid-way)."""
        proc = self.in_registrar_ns("-m", "tests.integration.light_agent", "hold",
                                    self.registrar.url, str(self.anchor),
                                    self.registrar.create_token("holder"),
                                    str(self.base / "holder"))
        assert proc.wait(timeout=120) == 0

    def revoke(self, spiffe_id: str) -> None:
        listed = json.loads(self.registrar.cli("workloads", "list", "--json").stdout)
        for workload in listed:
            if workload["spiffe_id"] == spiffe_id:
                self.registrar.cli("workloads", "revoke", str(workload["id"]))

    def rotations(self) -> dict[str, int]:
        return {a.config["sidecar"]["allowed_peers"][0]: int(a.status()["rotations"])
                for a in self.agents}

    def close(self) -> None:
        for traffic in self._traffic:  # a test that failed before stopping them
            for _, proc, _ in traffic.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for agent in self.agents:
            agent.kill()
        for app in self.apps:
            app.stop()
        self.registrar.kill()


def bundle_roots(agent: AgentProcess) -> int:
    """Roots in the bundle Envoy reads now (the SDS mirror of the current generation)."""
    text = (agent.state_dir / "envoy" / "sds" / "current" / "bundle.pem").read_text()
    return text.count("BEGIN CERTIFICATE")


def served_intermediate(agent: AgentProcess) -> str:
    """SHA-256 of the intermediate in the chain Envoy serves now (the SDS mirror)."""
    pem = (agent.state_dir / "envoy" / "sds" / "current" / "cert-chain.pem").read_bytes()
    chain = x509.load_pem_x509_certificates(pem)
    return chain[1].fingerprint(hashes.SHA256()).hex()
