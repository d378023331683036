"""A cloud VM as a network namespace: a veth to the host (where the registrar
listens) and the metadata address 169.254.169.254 on its loopback, served by a
fake metadata server running inside it, so the agent uses its default URLs.

``metadata.google.internal`` resolves through ``/etc/netns/<ns>/hosts``, which
``ip netns exec`` bind-mounts over /etc/hosts (as on a real GCE image).
Names carry the pid and a counter; ``close`` always removes everything.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.agent import AgentProcess
from tests.fixtures.registrar import RegistrarProcess, free_port

METADATA = "169.254.169.254"
REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()


def sh(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.returncode}: {result.stderr}")
    return result.stdout


@dataclass
class CloudVm:
    name: str
    host_ip: str
    vm_ip: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def serve_metadata(self, cloud: str, pki_dir: Path, *, drop_put: bool = False) -> None:
        argv = [*self.prefix, sys.executable, "-m", "tests.fakes.metadata_main",
                "--cloud", cloud, "--pki", str(pki_dir), "--listen", f"{METADATA}:80",
                "--private-ip", self.vm_ip]
        if drop_put:
            argv.append("--drop-put")
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"fake {cloud} metadata failed: {proc.communicate()[1]}")

    def python(self, code: str, timeout: float = 30) -> str:
        """Run Python inside the VM namespace (as the agent would run there)."""
        result = subprocess.run([*self.prefix, sys.executable, "-c", code], cwd=REPO,
                                capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"python in {self.name} failed: {result.stderr[-3000:]}")
        return result.stdout

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(f"/etc/netns/{self.name}", ignore_errors=True)


def make_vm() -> CloudVm:
    if os.geteuid() != 0:
        raise RuntimeError("cloud netns tests need root (CI is root): not skipping")
    n = next(_counter)
    pid = os.getpid()
    name = f"mcloud-{pid}-{n}"
    host_if = f"mcl{pid % 100000}h{n}"[:15]
    # A /30 on the host side: skip subnets another run (another pid) already uses.
    used = sh("ip", "-4", "-o", "addr", "show")
    octet = next(o for o in ((pid + 37 * n + i) % 250 for i in range(250))
                 if f"10.213.{o}.1/" not in used)
    vm = CloudVm(name=name, host_ip=f"10.213.{octet}.1", vm_ip=f"10.213.{octet}.2")
    try:
        sh("ip", "netns", "add", name)
        ns = ["ip", "-n", name]
        sh(*ns, "link", "set", "lo", "up")
        sh(*ns, "addr", "add", f"{METADATA}/32", "dev", "lo")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"{vm.host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh(*ns, "addr", "add", f"{vm.vm_ip}/30", "dev", "eth0")
        sh(*ns, "link", "set", "eth0", "up")
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{METADATA} metadata.google.internal\n")
    except BaseException:
        vm.close()
        raise
    return vm


class VmAgent(AgentProcess):
    """A real ``mesh-agent run`` inside a VM namespace, with no join token; its
    status endpoint listens on the VM's veth address so the host can read it."""

    vm_ip = ""

    @classmethod
    def inside(cls, vm: CloudVm, base_dir: Path, registrar: RegistrarProcess, *,
               method: str = "auto") -> VmAgent:
        port = free_port()
        agent = cls(base_dir, registrar, prefix=vm.prefix, extra={
            "attestation": {"method": method, "probe_timeout": "1s"},
            "status": {"listen": f"{vm.vm_ip}:{port}"}})
        agent.vm_ip = vm.vm_ip
        agent.status_port = port
        return agent

    def get(self, path: str) -> tuple[int, Any]:
        import urllib.error
        import urllib.request
        url = f"http://{self.vm_ip}:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()
