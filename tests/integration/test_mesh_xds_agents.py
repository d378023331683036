"""Issue 11 end to end, the agent side: one registrar (catalog + ADS) and three real
``mesh-agent run`` daemons in network namespaces with ``sidecar.mode: auto``
(xds, because the registrar offers it), capture and the DNS proxy on.

``frontend``'s app calls ``http://orders.shop.mesh:9090/`` by name: the DNS
proxy answers the VIP, capture sends the call to Envoy, mTLS to ``orders-b``
or ``orders-c`` (EDS from the registrar, fed by the agents' health reports).
Then b's app stops: b's probe fails, b leaves frontend's EDS within probe
period x failureThreshold + 1 s, and calls keep succeeding on c.

Topology: a ``hub`` namespace with a bridge (the registrar on 10.79.0.254) and
one namespace per VM on it. The apps' /etc/resolv.conf is replaced only inside
a private mount namespace (``unshare -m`` + bind mount).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess
from tests.fixtures.registrar import RegistrarProcess, free_port
from tests.sidecar.apps import EchoApp
from tests.sidecar.conftest import envoy_path, root, state_dirs
from tests.sidecar.netns import sh

__all__ = ["envoy_path", "root", "state_dirs"]
pytestmark = pytest.mark.netns

HUB_IP = "10.79.0.254"
XDS_PORT = 15010
VIP = "240.240.0.1"
PERIOD, FAILURES = 1, 2
GROUPS = [
    {"name": "frontend", "namespace": "shop", "service_account": "frontend",
     "cert_ttl": "1h", "labels": {"app": "frontend"}},
    {"name": "orders", "namespace": "shop", "service_account": "orders", "cert_ttl": "1h",
     "labels": {"app": "orders"}, "ports": {"http": 9090},
     "probe": {"httpGet": {"path": "/healthz", "port": 9090}, "periodSeconds": PERIOD,
               "failureThreshold": FAILURES}},
]


@dataclass
class Vm:
    name: str
    ns: str
    address: str
    agent: AgentProcess | None = None


class Hub:
    """A bridge in its own namespace; each VM namespace hangs off it by a veth."""

    def __init__(self) -> None:
        pid = os.getpid() % 100000
        self.tag = f"x{pid}"
        self.ns = f"mx-hub-{pid}"
        self.vms: list[Vm] = []

    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.ns, "addr", "add", f"{HUB_IP}/24", "dev", "br0")
        sh("ip", "-n", self.ns, "link", "set", "br0", "up")

    def add(self, name: str, index: int) -> Vm:
        vm = Vm(name, f"mx-{name}-{os.getpid() % 100000}", f"10.79.0.{index}")
        sh("ip", "netns", "add", vm.ns)
        inside, outside = f"{self.tag}i{index}", f"{self.tag}o{index}"
        sh("ip", "link", "add", inside, "netns", vm.ns, "type", "veth", "peer", "name",
           outside, "netns", self.ns)
        sh("ip", "-n", self.ns, "link", "set", outside, "master", "br0", "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{vm.address}/24", "dev",
                    inside], ["link", "set", inside, "up"],
                    ["route", "add", "default", "via", HUB_IP]):
            sh("ip", "-n", vm.ns, *cmd)
        self.vms.append(vm)
        return vm

    def destroy(self) -> None:
        for vm in self.vms:
            sh("ip", "netns", "del", vm.ns, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def agent_config(envoy: Path, resolv: Path, inbound: list[int]) -> dict[str, Any]:
    return {
        "proxy": {"uid": 1337, "gid": 1337},
        "sidecar": {"enabled": True, "mode": "auto", "envoy_path": str(envoy),
                    "drain_time": "1s", "ipv6": False},
        "capture": {"enabled": True, "backend": "nftables", "inbound_ports": inbound,
                    "ipv6": False},
        "dns": {"enabled": True, "resolv_conf": str(resolv), "refresh": "1s"},
        "workload": {"drain_wait": "1s"},
    }


def app_curl(vm: Vm, resolv: Path, url: str) -> tuple[int, str]:
    """The app's call by name: curl as uid 1000 with the VM's resolv.conf."""
    script = (f"mount --bind {resolv} /etc/resolv.conf && exec setpriv --reuid 1000 "
              f"--regid 1000 --clear-groups curl -s -m 3 {url}")
    out = subprocess.run(["ip", "netns", "exec", vm.ns, "unshare", "-m", "sh", "-c", script],
                         capture_output=True, text=True, timeout=20, check=False)
    return out.returncode, out.stdout


def eds_hosts(vm: Vm) -> set[str]:
    """The endpoints of orders' outbound cluster in this VM's Envoy (admin /clusters)."""
    out = subprocess.run(["ip", "netns", "exec", vm.ns, "curl", "-s", "-m", "2",
                          "http://127.0.0.1:15000/clusters"], capture_output=True, text=True,
                         check=False).stdout
    return set(re.findall(r"orders\.shop\.mesh::(\d+\.\d+\.\d+\.\d+):9090::cx_active", out))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture
def mesh(root: None, envoy_path: Path, state_dirs: Callable[[str], Path]
         ) -> Iterator[tuple[Hub, RegistrarProcess, dict[str, Vm], dict[str, EchoApp], Path]]:
    hub = Hub()
    apps: dict[str, EchoApp] = {}
    base = state_dirs("registrar")
    reg = RegistrarProcess(base, host=HUB_IP, port=free_port(),
                           prefix=["ip", "netns", "exec", hub.ns],
                           config={"groups": GROUPS,
                                   "xds": {"listen": f"{HUB_IP}:{XDS_PORT}",
                                           "health_grace": "5s"}})
    resolv = base / "resolv.conf"
    # The nameserver is the hub, where no DNS server runs: only the agent's DNS
    # proxy (through capture) can answer the mesh name.
    resolv.write_text(f"nameserver {HUB_IP}\noptions timeout:1 attempts:2\n")
    resolv.chmod(0o644)
    vms: dict[str, Vm] = {}
    try:
        hub.create()
        reg.start()
        wait_for(lambda: "xds serving" in reg.log_text(), 15, "xds serving")
        reg.cli("service", "add", "orders", "--host", "orders.shop.mesh", "--port",
                "http:9090/HTTP", "--selector", "app=orders", "--vip", VIP, "--allow", "frontend")
        for index, (name, group, inbound) in enumerate(
                (("frontend", "frontend", []), ("orders-b", "orders", [9090]),
                 ("orders-c", "orders", [9090])), start=1):
            vm = vms[name] = hub.add(name, index)
            if group == "orders":
                apps[name] = EchoApp(vm.ns, 9090)
                apps[name].start()
            vm.agent = AgentProcess(state_dirs(name), reg, token=reg.create_token(group),
                                    netns=vm.ns, extra=agent_config(envoy_path, resolv, inbound))
            vm.agent.start()
        for vm in vms.values():
            assert vm.agent is not None
            vm.agent.wait_ready(90)
        yield hub, reg, vms, apps, resolv
    finally:
        for vm in vms.values():
            if vm.agent is not None:
                print(f"--- {vm.name} agent log (tail)\n{vm.agent.log_text()[-2500:]}")
                vm.agent.kill()
        for app in apps.values():
            app.stop()
        print(f"--- registrar log (tail)\n{reg.log_text()[-3000:]}")
        reg.kill()
        hub.destroy()


def test_call_by_name_balanced_then_failed_backend_leaves_eds(mesh: Any) -> None:
    _hub, _reg, vms, apps, resolv = mesh
    fe, b, c = vms["frontend"], vms["orders-b"], vms["orders-c"]
    for vm in vms.values():
        assert "sidecar mode: xds" in vm.agent.log_text(), vm.agent.log_text()[-3000:]
    wait_for(lambda: eds_hosts(fe) == {b.address, c.address}, 30, "both backends in EDS")
    restarts = fe.agent.status()["sidecar"]["restarts"]

    # By name, through DNS -> VIP -> capture -> mTLS, balanced over b and c.
    for _ in range(20):
        code, body = app_curl(fe, resolv, "http://orders.shop.mesh:9090/hi")
        assert (code, body) == (0, "app:9090:/hi"), (code, body)
    hits = {name: sum(s.path == "/hi" for s in app.seen) for name, app in apps.items()}
    assert all(n > 0 for n in hits.values()) and sum(hits.values()) == 20, hits
    # Inbound traffic reached the apps through Envoy (127.0.0.6), never directly.
    assert {s.client for app in apps.values() for s in app.seen if s.path == "/hi"} == {
        "127.0.0.6"}
    # b's Envoy logs the caller's SPIFFE ID (mTLS); Envoy flushes access logs late.
    wait_for(lambda: "inbound peer=spiffe://example.org/ns/shop/sa/frontend" in (
        b.agent.log_text()), 15, "frontend's identity in b's access log")

    # b's app stops: its probe fails; b leaves EDS within period x threshold + 1 s.
    apps["orders-b"].stop()
    stopped = time.monotonic()
    wait_for(lambda: eds_hosts(fe) == {c.address}, PERIOD * FAILURES + 1.0 + 5, "b leaves")
    took = time.monotonic() - stopped
    print(f"orders-b app stopped -> gone from frontend's EDS in {took:.2f}s")
    assert took <= PERIOD * FAILURES + 1.0, took
    for _ in range(10):
        assert app_curl(fe, resolv, "http://orders.shop.mesh:9090/after") == (
            0, "app:9090:/after")
    assert fe.agent.status()["sidecar"]["restarts"] == restarts  # pushes, never restarts

    # The registrar dies: calls go on with the last config; back, every Envoy resyncs
    # within the ADS bootstrap's capped reconnect backoff (5 s) plus a margin.
    reg = mesh[1]
    reg.kill()
    assert app_curl(fe, resolv, "http://orders.shop.mesh:9090/outage") == (
        0, "app:9090:/outage")
    time.sleep(2)
    offset = len(reg.log_text())
    reg.start()
    opened = re.compile(r"xds stream \d+ opened node=spiffe://example.org/ns/shop/sa/")
    resync = wait_for(lambda: len(opened.findall(reg.log_text()[offset:])) == 3, 15, "resync")
    print(f"registrar restarted -> 3 Envoys resynced in {resync:.2f}s")
    assert resync <= 6.0, resync  # Envoy's default backoff measured 8.9 s here
    assert fe.agent.status()["sidecar"]["restarts"] == restarts

    # SIGTERM c: draining is reported first, then capture off, then Envoy drains.
    assert c.agent.stop(timeout=30) == 0
    log = c.agent.log_text()
    assert log.index("health reported: draining") < log.index("capture removed"), log[-3000:]
