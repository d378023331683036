"""The mesh's network for Istio tests: istiod's namespace holds a bridge, and
every VM namespace hangs off it on a veth, so VMs reach istiod and each other.

Nothing is added to the host's network: both veth ends are created directly
inside namespaces, and the subnet only exists behind them. Names carry the pid
and a counter so parallel runs never collide; ``close`` removes everything,
including ``/etc/netns/<vm>/`` (``ip netns exec`` bind-mounts its ``hosts``
and ``resolv.conf`` over /etc's, which is how a VM gets istioctl's ``hosts``
line without touching the host's /etc/hosts).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.sidecar.netns import call_in

SUBNET = "10.88.0"
ISTIOD_IP = f"{SUBNET}.1"
# resolv.conf's nameserver on every VM: nothing answers there; Istio's DNS
# capture redirects queries for it to pilot-agent's DNS proxy.
UPSTREAM_DNS = f"{SUBNET}.53"
_counter = itertools.count()
BRIDGE_MAC = "02:00:0a:58:00:01"  # locally administered; only seen inside the namespaces


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def http_get(netns: str, url: str, timeout: float = 5) -> tuple[int, str]:
    """GET ``url`` from a socket made inside ``netns`` (status, body); 0 on no answer."""
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (OSError, urllib.error.URLError) as exc:
            return 0, str(exc)
    return call_in(netns, fetch)


@dataclass
class VmNamespace:
    """A VM: a network namespace with ``eth0`` on the mesh bridge."""

    name: str
    ip: str
    etc: Path  # /etc/netns/<name>: hosts and resolv.conf seen inside

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def exec(self, *argv: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix, *argv, check=check, timeout=timeout)

    def set_hosts(self, extra: str) -> None:
        """/etc/hosts inside the VM: localhost plus ``extra`` (istioctl's ``hosts`` file)."""
        (self.etc / "hosts").write_text(f"127.0.0.1 localhost\n{extra}")

    def start_echo(self, port: int, app: str, python: str) -> subprocess.Popen[str]:
        """A plain-HTTP app in the VM (as root: not the proxy uid, so it is captured),
        answering once it listens."""
        echo = Path(__file__).with_name("echo.py")
        proc = subprocess.Popen([*self.prefix, python, str(echo), str(port), app],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"echo app in {self.name} failed: {proc.communicate()[1]}")
        return proc

    def curl(self, url: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """An app's plain-HTTP call from inside the VM (root: captured like any app);
        the body, then the status code on the last line."""
        return self.exec("curl", "-sS", "-m", str(timeout), "-o", "-", "-w",
                         "\n%{http_code}", url, check=False, timeout=timeout + 5)

    def call_until(self, url: str, want: int, timeout: float = 45) -> str:
        """``curl`` again, a second apart, while the mesh converges (EDS and NDS reach
        this VM's proxy) until the answer has status ``want``; its body."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self.curl(url)
            body, _, code = result.stdout.rpartition("\n")
            last = f"{code}: {body[:400]} {result.stderr[:400]}"
            if code == str(want):
                return body
            time.sleep(1)
        raise AssertionError(f"{self.name} -> {url}: wanted {want}, last {last}")


class MeshNetwork:
    """istiod's namespace with a bridge at ``ISTIOD_IP``, and VMs attached to it."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("Istio tests need root (network namespaces); not skipping")
        self.tag = f"{os.getpid()}-{next(_counter)}"
        self.istiod_ns = f"istiod-{self.tag}"
        self.istiod_ip = ISTIOD_IP
        self.vms: list[VmNamespace] = []
        self._next_host = 10
        try:
            sh("ip", "netns", "add", self.istiod_ns)
            ns = ["ip", "-n", self.istiod_ns]
            sh(*ns, "link", "set", "lo", "up")
            # A fixed address: a bridge left to choose takes its lowest port's MAC and
            # changes it as VMs come and go (a deleted namespace's veth goes away
            # later, asynchronously); VMs that cached the old one in ARP then lose
            # istiod for ~40 s, until their neighbour entry is probed again.
            sh(*ns, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge")
            sh(*ns, "addr", "add", f"{ISTIOD_IP}/24", "dev", "br0")
            sh(*ns, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def add_vm(self, label: str = "vm") -> VmNamespace:
        """A new VM namespace on the bridge, default route via istiod's address (so
        outbound to service VIPs routes, and capture can take it)."""
        host = self._next_host
        self._next_host += 1
        if host > 250:
            raise RuntimeError("mesh network is full")
        vm = VmNamespace(name=f"ivm-{label}-{self.tag}-{host}"[:40], ip=f"{SUBNET}.{host}",
                         etc=Path("/etc/netns") / f"ivm-{label}-{self.tag}-{host}"[:40])
        self.vms.append(vm)
        sh("ip", "netns", "add", vm.name)
        port = f"vb{host}"
        sh("ip", "-n", self.istiod_ns, "link", "add", port, "type", "veth",
           "peer", "name", "eth0", "netns", vm.name)
        sh("ip", "-n", self.istiod_ns, "link", "set", port, "master", "br0", "up")
        inside = ["ip", "-n", vm.name]
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "addr", "add", f"{vm.ip}/24", "dev", "eth0")
        sh(*inside, "link", "set", "eth0", "up")
        sh(*inside, "route", "add", "default", "via", ISTIOD_IP)
        vm.etc.mkdir(parents=True, exist_ok=True)
        vm.set_hosts("")
        (vm.etc / "resolv.conf").write_text(f"nameserver {UPSTREAM_DNS}\n")
        return vm

    def plain_call_from_outside(self, url: str) -> subprocess.CompletedProcess[str]:
        """A plain-text call from a VM outside the mesh (no proxy, no certificate), in a
        namespace made for it and removed after: what STRICT mTLS must refuse."""
        outsider = self.add_vm("outsider")
        try:
            return outsider.exec("curl", "-sS", "-m", "5", url, check=False, timeout=15)
        finally:
            self.remove_vm(outsider)

    def remove_vm(self, vm: VmNamespace) -> None:
        sh("ip", "netns", "del", vm.name, check=False)
        shutil.rmtree(vm.etc, ignore_errors=True)
        if vm in self.vms:
            self.vms.remove(vm)

    def close(self) -> None:
        for vm in list(self.vms):
            self.remove_vm(vm)
        sh("ip", "netns", "del", self.istiod_ns, check=False)
