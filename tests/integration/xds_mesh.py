"""The harness for the issue 11 end-to-end tests (test_mesh_xds_*.py): one
registrar (catalog + ADS) and real ``mesh-agent run`` daemons in network
namespaces with ``sidecar.mode: auto`` (xds, because the registrar offers it),
capture and the DNS proxy on.

VMs: ``frontend`` calls ``orders`` (``orders.shop.mesh``, served by ``orders-b``
and ``orders-c``); ``intruder`` belongs to a group nobody allows.

Topology: a ``hub`` namespace with a bridge (the registrar on 10.79.0.254) and
one namespace per VM on it. The apps' /etc/resolv.conf is replaced only inside
a private mount namespace (``unshare -m`` + bind mount); its nameserver is a
local test resolver (tests/agent/dns/resolver.py) on the hub, which knows
``example.org`` and nothing of the mesh.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
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

HERE = Path(__file__).parent
RESOLVER = HERE.parent / "agent" / "dns" / "resolver.py"
HUB_IP = "10.79.0.254"
XDS_PORT = 15010
VIP = "240.240.0.1"
PERIOD, FAILURES = 1, 2
GROUPS = [
    {"name": "frontend", "namespace": "shop", "service_account": "frontend",
     "cert_ttl": "1h", "labels": {"app": "frontend"}},
    {"name": "intruder", "namespace": "shop", "service_account": "intruder",
     "cert_ttl": "1h", "labels": {"app": "intruder"}},
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
        # A fixed (locally administered) address: left to itself the bridge takes its
        # lowest port's MAC and changes it as VMs are added and removed, and VMs whose
        # ARP cache holds the old one lose the hub until the entry is probed again.
        sh("ip", "-n", self.ns, "link", "add", "br0", "address", "02:00:0a:4f:00:01",
           "type", "bridge")
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
    out = subprocess.run(app_shell(vm, resolv, f"curl -s -m 3 {url}"), capture_output=True,
                         text=True, timeout=20, check=False)
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


def app_shell(vm: Vm, resolv: Path, command: str) -> list[str]:
    """argv running ``command`` as the app (uid 1000) with the VM's resolv.conf."""
    script = (f"mount --bind {resolv} /etc/resolv.conf && exec setpriv --reuid 1000 "
              f"--regid 1000 --clear-groups {command}")
    return ["ip", "netns", "exec", vm.ns, "unshare", "-m", "sh", "-c", script]


def getent(vm: Vm, resolv: Path, name: str) -> str | None:
    out = subprocess.run(app_shell(vm, resolv, f"getent hosts {name}"), capture_output=True,
                         text=True, timeout=20, check=False)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout else None


def admin(vm: Vm, path: str) -> Any:
    out = subprocess.run(["ip", "netns", "exec", vm.ns, "curl", "-s", "-m", "2",
                          f"http://127.0.0.1:15000{path}"], capture_output=True, text=True,
                         check=False).stdout
    return json.loads(out) if out.startswith("{") else {}


def outbound_chains(vm: Vm) -> set[str]:
    """The filter chains of the VM Envoy's ``virtualOutbound`` (from LDS)."""
    dump = admin(vm, "/config_dump?resource=dynamic_listeners")
    for item in dump.get("configs", []):
        listener = item.get("active_state", {}).get("listener", {})
        if listener.get("name") == "virtualOutbound":
            return {c.get("name", "") for c in listener.get("filter_chains", [])}
    return set()


def push_latency(db: Path, action: Callable[[], object], arrived: Callable[[], bool],
                 timeout: float = 10.0) -> float:
    """Seconds from the commit of ``action``'s catalog write (a CLI call) until
    ``arrived()`` holds. The commit is the first moment ``mesh_changes.counter``
    (bumped by triggers on every catalog write) differs, polled every 5 ms from a
    thread; ``arrived`` is polled meanwhile, while the CLI may still be exiting. So
    neither the CLI's start-up nor its exit (seconds each under load) is charged."""
    def counter(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT counter FROM mesh_changes").fetchone()[0])

    committed: list[float] = []
    conn = sqlite3.connect(db, check_same_thread=False)
    before = counter(conn)
    deadline = time.monotonic() + timeout

    def watch() -> None:
        while time.monotonic() < deadline:
            if counter(conn) != before:
                committed.append(time.monotonic())
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    runner = threading.Thread(target=action, daemon=True)
    watcher.start()
    runner.start()
    try:
        while not committed and time.monotonic() < deadline:
            time.sleep(0.005)
        assert committed, "the action changed nothing in the catalog"
        wait_for(arrived, max(0.0, deadline - time.monotonic()), "the change to arrive")
        return time.monotonic() - committed[0]
    finally:
        runner.join(timeout=60)
        watcher.join()
        conn.close()


class Load:
    """The app's continuous calls by name: one curl after another inside the VM,
    each writing ``HTTP_CODE CURL_EXIT`` to a file, until ``stop``."""

    def __init__(self, vm: Vm, resolv: Path, url: str, work: Path) -> None:
        self.out = work / f"load-{vm.name}.txt"
        self.stop_file = Path(f"/tmp/mesh-load-stop-{os.getpid()}")
        self.stop_file.unlink(missing_ok=True)
        loop = (f"sh -c 'while [ ! -e {self.stop_file} ]; do curl -s -m 3 -o /dev/null "
                f"-w \"%{{http_code}} %{{exitcode}}\\n\" {url}; done'")
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(app_shell(vm, resolv, loop), stdout=out)

    def results(self) -> list[str]:
        return self.out.read_text().splitlines()

    def stop(self) -> list[str]:
        self.stop_file.touch()
        try:
            self.proc.wait(timeout=15)
        finally:
            self.stop_file.unlink(missing_ok=True)
        return self.results()


@dataclass
class Mesh:
    hub: Hub
    reg: RegistrarProcess
    vms: dict[str, Vm]
    apps: dict[str, EchoApp]
    resolv: Path
    work: Path

    def agent(self, name: str) -> AgentProcess:
        agent = self.vms[name].agent
        assert agent is not None
        return agent


def orders_args(*allow: str) -> list[str]:
    args = ["service", "add", "orders", "--host", "orders.shop.mesh", "--port",
            "http:9090/HTTP", "--selector", "app=orders", "--vip", VIP]
    for caller in allow:
        args += ["--allow", caller]
    return args


def make_registrar(hub: Hub, base: Path) -> RegistrarProcess:
    return RegistrarProcess(base, host=HUB_IP, port=free_port(),
                            prefix=["ip", "netns", "exec", hub.ns],
                            config={"groups": GROUPS,
                                    "xds": {"listen": f"{HUB_IP}:{XDS_PORT}",
                                            "health_grace": "5s"}})


def start_resolver(hub: Hub) -> subprocess.Popen[str]:
    """The VMs' upstream nameserver, on the hub: example.org only."""
    proc = subprocess.Popen(["ip", "netns", "exec", hub.ns, sys.executable, str(RESOLVER),
                             HUB_IP], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def start_control_plane(hub: Hub, reg: RegistrarProcess) -> subprocess.Popen[str]:
    """The hub's bridge and test resolver, the registrar serving xDS, and ``orders``
    (frontend may call it). Returns the resolver, for the caller to stop."""
    hub.create()
    resolver = start_resolver(hub)
    try:
        reg.start()
        wait_for(lambda: "xds serving" in reg.log_text(), 15, "xds serving")
        reg.cli(*orders_args("frontend"))
    except BaseException:
        resolver.kill()
        resolver.wait()
        raise
    return resolver


VMS: tuple[tuple[str, str, list[int]], ...] = (
    ("frontend", "frontend", []), ("intruder", "intruder", []),
    ("orders-b", "orders", [9090]), ("orders-c", "orders", [9090]))


@pytest.fixture
def mesh(root: None, envoy_path: Path, state_dirs: Callable[[str], Path]) -> Iterator[Mesh]:
    hub = Hub()
    apps: dict[str, EchoApp] = {}
    base = state_dirs("registrar")
    reg = make_registrar(hub, base)
    resolv = base / "resolv.conf"
    # The nameserver is the hub's test resolver, which knows no mesh name: only the
    # agent's DNS proxy (through capture) can answer those.
    resolv.write_text(f"nameserver {HUB_IP}\noptions timeout:1 attempts:2\n")
    resolv.chmod(0o644)
    vms: dict[str, Vm] = {}
    resolver = None
    try:
        resolver = start_control_plane(hub, reg)
        for index, (name, group, inbound) in enumerate(VMS, start=1):
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
        yield Mesh(hub, reg, vms, apps, resolv, base)
    finally:
        for vm in vms.values():
            if vm.agent is not None:
                print(f"--- {vm.name} agent log (tail)\n{vm.agent.log_text()[-2500:]}")
                vm.agent.kill()
        for app in apps.values():
            app.stop()
        if resolver is not None:
            resolver.kill()
            resolver.wait()
        print(f"--- registrar log (tail)\n{reg.log_text()[-3000:]}")
        reg.kill()
        hub.destroy()
