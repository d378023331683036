"""The registrar's ADS server with real Envoys in namespaces: the view each node
gets, changes without restarts, NACKs, outages, and refusals.

The tests share one mesh (module scope) and run in file order; each leaves it
as it found it: orders serving, frontend allowed, both healthy.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.registrar import REPO, RegistrarProcess
from tests.registrar.xds.mesh import XDS_PORT, Node, wait_for
from tests.sidecar.netns import HostPair, sh

pytestmark = pytest.mark.netns
ORDERS_VIP = "240.240.0.1"
GROUPS = [
    {"name": "frontend", "namespace": "shop", "service_account": "frontend",
     "cert_ttl": "1h", "labels": {"app": "frontend"}},
    {"name": "orders", "namespace": "shop", "service_account": "orders", "cert_ttl": "1h",
     "labels": {"app": "orders"}, "ports": {"http": 9090},
     "probe": {"httpGet": {"path": "/", "port": 9090}, "periodSeconds": 1}},
]
ORDERS_ARGS = ["orders", "--host", "orders.shop.mesh", "--port", "http:9090/HTTP",
               "--selector", "app=orders", "--vip", ORDERS_VIP]


@dataclass
class Mesh:
    reg: RegistrarProcess
    frontend: Node
    orders: Node
    pair: HostPair
    envoy: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.reg.cli(*args, check=check)

    def call(self, vip: str = ORDERS_VIP, port: int = 9090) -> tuple[int, str]:
        return self.frontend.curl(f"http://{vip}:{port}/", timeout=2)

    def metrics(self) -> str:
        def get() -> str:
            ctx = ssl.create_default_context(cafile=str(self.reg.ca_file))
            return httpx.get(f"{self.reg.url}/metrics", verify=ctx, timeout=5).text
        text: str = self.orders.in_ns(get)
        return text


class Reporter(threading.Thread):
    """The agent's part for now: every node reports its health every second."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__(daemon=True)
        self.nodes = nodes
        self.health = {n.group: "healthy" for n in nodes}
        self.paused: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for node in self.nodes:
                if node.group not in self.paused:
                    try:
                        node.report(self.health[node.group])
                    except Exception as exc:  # the registrar may be down on purpose
                        print(f"report {node.group}: {exc}", file=sys.stderr)


def _capture(pair: HostPair) -> None:
    """Istio's redirects, reduced to what this mesh needs: the frontend's calls to
    VIPs go to its Envoy's 15001; orders' inbound 9090 goes to its Envoy's 15006."""
    fe, orders = pair.vm, pair.peer
    fe.ip("route", "add", "240.240.0.0/16", "dev", _veth(fe))
    fe.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "240.240.0.0/16",
            "-j", "REDIRECT", "--to-ports", "15001")
    orders.exec("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9090",
                "-j", "REDIRECT", "--to-ports", "15006")


def _veth(host: object) -> str:
    out = sh("ip", "-n", host.name, "-o", "link", "show", "type", "veth").stdout  # type: ignore[attr-defined]
    return out.split(":")[1].strip().split("@")[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, root: None,
         envoy_path: Path, module_store: dict[str, Any] | None) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("xds")
    base.chmod(0o755)
    pair = HostPair("xd")
    app = reporter = None
    nodes: list[Node] = []
    reg = RegistrarProcess(base / "registrar", host=pair.peer.address,
                           prefix=["ip", "netns", "exec", pair.peer.name], store=module_store,
                           config={"groups": GROUPS,
                                   "xds": {"listen": f"{pair.peer.address}:{XDS_PORT}",
                                           "health_grace": "3s"}})
    (base / "registrar").mkdir()
    try:
        pair.create()
        _capture(pair)
        reg.start()
        wait_for(lambda: "xds serving" in reg.log_text(), 10)
        app = subprocess.Popen(["ip", "netns", "exec", pair.peer.name, sys.executable, "-m",
                                "http.server", "9090", "--bind", "127.0.0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        frontend = Node(pair.vm, base / "frontend", reg, "frontend")
        orders = Node(pair.peer, base / "orders", reg, "orders")
        nodes = [frontend, orders]
        for node in nodes:
            node.attest()
            node.report()
        reg.cli("service", "add", *ORDERS_ARGS, "--allow", "frontend")
        for node in nodes:
            node.start_envoy(envoy_path)
        reporter = Reporter(nodes)
        reporter.start()
        m = Mesh(reg, frontend, orders, pair, envoy_path)
        m.reporter = reporter  # type: ignore[attr-defined]
        # Every test starts from a mesh that serves (each may run alone with -k).
        wait_for(lambda: m.call() == (0, "200"), 20)
        yield m
    finally:
        if reporter is not None:
            reporter.stop.set()
        for node in nodes:
            node.stop_envoy()
        if app is not None:
            app.kill()
            app.wait()
        reg.kill()
        pair.destroy()
        for node in nodes:
            if node.log.exists():
                print(f"--- {node.group} envoy log (tail)\n{node.log.read_text()[-3000:]}")
        print(f"--- registrar log (tail)\n{reg.log_text()[-4000:]}")


def _outbound_chains(node: Node) -> set[str]:
    listeners = node.dynamic()["listeners"]
    if "virtualOutbound" not in listeners:
        return set()
    return {c["name"] for c in listeners["virtualOutbound"][1].get("filter_chains", [])}


def test_each_envoy_gets_its_view_and_traffic_flows(mesh: Mesh) -> None:
    wait_for(lambda: "outbound|9090||orders.shop.mesh" in _outbound_chains(mesh.frontend), 15)
    wait_for(lambda: "virtualInbound" in mesh.orders.dynamic()["listeners"], 15)
    assert "virtualInbound" not in mesh.frontend.dynamic()["listeners"]  # serves nothing
    clusters = mesh.frontend.dynamic()["clusters"]
    assert {"PassthroughCluster", "outbound|9090||orders.shop.mesh"} <= set(clusters)
    # Captured, balanced to orders' EDS endpoint, mTLS + RBAC on orders' inbound.
    wait_for(lambda: mesh.call() == (0, "200"), 10)
    inbound = mesh.orders.log.read_text()
    assert re.search(r"inbound peer=spiffe://example.org/ns/shop/sa/frontend .*"
                     r"cluster=inbound\|9090\|\|", inbound), inbound[-2000:]


def _restart_markers(node: Node) -> tuple[int | None, int]:
    assert node.proc is not None and node.proc.poll() is None
    stats = node.stats("server.uptime")
    return node.proc.pid, stats["server.uptime"]


def test_service_added_by_cli_reaches_envoy_within_1s_without_restart(mesh: Mesh) -> None:
    pid, uptime = _restart_markers(mesh.frontend)
    lds_before = mesh.frontend.stats("listener_manager.lds.update_success")
    # The LDS version (per-listener version_info survives an in-place filter chain update).
    version_before = mesh.frontend.dynamic()["versions"]["ListenersConfigDump"]
    mesh.cli("service", "add", "ledger", "--host", "ledger.shop.mesh", "--port", "pg:7070/TCP",
             "--selector", "app=orders", "--vip", "240.240.0.7", "--allow", "frontend")
    took = wait_for(lambda: "outbound|7070||ledger.shop.mesh" in _outbound_chains(
        mesh.frontend), 1.0)
    print(f"service add -> frontend LDS in {took * 1000:.0f} ms")
    pid_after, uptime_after = _restart_markers(mesh.frontend)
    assert pid_after == pid and uptime_after >= uptime  # same process, never restarted
    assert mesh.frontend.dynamic()["versions"]["ListenersConfigDump"] != version_before
    assert mesh.frontend.stats("listener_manager.lds.update_success")[
        "listener_manager.lds.update_success"] > lds_before["listener_manager.lds.update_success"]
    mesh.cli("service", "remove", "ledger")
    wait_for(lambda: "outbound|7070||ledger.shop.mesh" not in _outbound_chains(
        mesh.frontend), 1.0)
    assert "outbound|7070||ledger.shop.mesh" not in mesh.frontend.dynamic()["clusters"]


def test_policy_change_takes_effect_within_1s(mesh: Mesh) -> None:
    assert mesh.call() == (0, "200")
    mesh.cli("service", "add", *ORDERS_ARGS, "--replace")  # nobody may call
    took = wait_for(lambda: mesh.call()[1] != "200", 1.5)
    print(f"policy revoke -> refused in {took * 1000:.0f} ms")
    wait_for(lambda: "details=rbac_access_denied" in mesh.orders.log.read_text(), 3)
    mesh.cli("service", "add", *ORDERS_ARGS, "--replace", "--allow", "frontend")
    wait_for(lambda: mesh.call() == (0, "200"), 1.5)


def _orders_endpoints(node: Node) -> list[str]:
    clusters = node.admin("/clusters?format=json")
    for status in clusters.get("cluster_statuses", []):
        if status["name"] == "outbound|9090||orders.shop.mesh":
            return [h["address"]["socket_address"]["address"]
                    for h in status.get("host_statuses", [])]
    return []


def test_health_and_silence_remove_the_endpoint(mesh: Mesh) -> None:
    reporter = mesh.reporter  # type: ignore[attr-defined]
    assert _orders_endpoints(mesh.frontend) == [mesh.orders.host.address]
    mesh.orders.report("unhealthy")
    reporter.health["orders"] = "unhealthy"
    wait_for(lambda: _orders_endpoints(mesh.frontend) == [], 1.5)
    reporter.health["orders"] = "healthy"
    mesh.orders.report("healthy")
    wait_for(lambda: _orders_endpoints(mesh.frontend) == [mesh.orders.host.address], 1.5)
    # A VM that stops reporting is unhealthy after the grace period (3 s here).
    reporter.paused.add("orders")
    started = time.monotonic()
    wait_for(lambda: _orders_endpoints(mesh.frontend) == [], 6)
    silent = time.monotonic() - started
    assert 2.0 <= silent <= 5.5, silent
    rows = json.loads(mesh.cli("workloads", "list", "--json").stdout)
    orders = next(r for r in rows if r["group"] == "orders")
    assert (orders["health"], orders["health_reason"]) == ("unhealthy", "stale")
    reporter.paused.discard("orders")
    mesh.orders.report("healthy")
    wait_for(lambda: mesh.call() == (0, "200"), 2)


def _nacks(mesh: Mesh) -> int:
    return sum(int(float(m)) for m in re.findall(
        r'registrar_xds_events_total\{event="nack",type="[A-Z]+"\} (\S+)', mesh.metrics()))


def test_a_nacked_resource_is_reported_once_and_the_rest_keeps_working(mesh: Mesh) -> None:
    before = _nacks(mesh)
    # What a hand edit or an older registrar could leave: a port Envoy refuses.
    mesh.reg.sql("INSERT INTO mesh_services VALUES ('broken', '[\"broken.shop.mesh\"]',"
                 " '[{\"name\": \"tcp\", \"number\": 70000, \"protocol\": \"TCP\","
                 " \"target_port\": 0}]', '{\"app\": \"nothing\"}', '240.240.0.99', '[]',"
                 " 0, 0)")
    wait_for(lambda: _nacks(mesh) > before, 3)
    settled = _nacks(mesh)
    time.sleep(2.5)
    assert _nacks(mesh) == settled, "a NACKed version was offered again"
    status = mesh.cli("xds", "status", "--json")
    streams = json.loads(status.stdout)
    assert any("70000" in s["last_nack"] or "port" in s["last_nack"].lower()
               for s in streams), streams
    assert "xds NACK" in mesh.reg.log_text()
    assert mesh.call() == (0, "200")  # the last accepted config keeps serving
    mesh.cli("service", "remove", "broken")
    mesh.cli("service", "add", "ledger", "--host", "ledger.shop.mesh", "--port", "pg:7070/TCP",
             "--selector", "app=orders", "--vip", "240.240.0.7", "--allow", "frontend")
    wait_for(lambda: "outbound|7070||ledger.shop.mesh" in _outbound_chains(mesh.frontend), 2)
    mesh.cli("service", "remove", "ledger")
    wait_for(lambda: "outbound|7070||ledger.shop.mesh" not in _outbound_chains(
        mesh.frontend), 2)


def test_registrar_down_keeps_config_and_restart_resyncs(mesh: Mesh) -> None:
    pid, _ = _restart_markers(mesh.frontend)
    mesh.reg.kill()
    killed = time.monotonic()
    time.sleep(1.0)
    assert mesh.call() == (0, "200")  # xDS is not on the data path
    mesh.cli("service", "add", "ledger", "--host", "ledger.shop.mesh", "--port", "pg:7070/TCP",
             "--selector", "app=orders", "--vip", "240.240.0.7", "--allow", "frontend")
    time.sleep(0.5)
    assert "outbound|7070||ledger.shop.mesh" not in _outbound_chains(mesh.frontend)
    # Down for longer than the grace period (3 s): no VM could report meanwhile, and
    # the restarted registrar must not count that silence (it once did: orders went
    # stale, the frontend's first call after the resync found no endpoint and was
    # reset, until orders' next report; tests/registrar/test_catalog.py pins the rule).
    time.sleep(max(0.0, killed + 4.0 - time.monotonic()))
    served_before = mesh.reg.log_text().count("xds serving")
    mesh.reg.start()  # returns once HTTPS answers; the xDS process starts beside it
    wait_for(lambda: mesh.reg.log_text().count("xds serving") > served_before, 30)
    # Envoy's reconnect backoff is capped at 5 s (agent/sidecar/ads.py).
    try:
        took = wait_for(lambda: "outbound|7070||ledger.shop.mesh" in _outbound_chains(
            mesh.frontend), 15)
    except AssertionError as exc:
        envoy_log = mesh.frontend.log.read_text(errors="replace")
        raise AssertionError(f"{exc}\n-- registrar log (tail):\n{mesh.reg.log_text()[-4000:]}"
                             f"\n-- frontend Envoy log (tail):\n{envoy_log[-4000:]}") from None
    print(f"registrar restart -> frontend resynced in {took:.1f} s")
    assert mesh.call() == (0, "200")
    assert _restart_markers(mesh.frontend)[0] == pid
    mesh.cli("service", "remove", "ledger")


def _ads_client(mesh: Mesh, node: Node, node_id: str) -> dict[str, object]:
    result = subprocess.run(
        ["ip", "netns", "exec", node.host.name, sys.executable, "-m",
         "tests.registrar.xds.ads_client", "--target", f"{mesh.reg.host}:{XDS_PORT}",
         "--ca", str(mesh.reg.ca_file), "--cert", str(node.base / "cert.pem"),
         "--key", str(node.base / "key.pem"), "--node-id", node_id],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_a_node_gets_only_its_own_view(mesh: Mesh) -> None:
    own = _ads_client(mesh, mesh.frontend, mesh.frontend.spiffe_id)
    assert own["code"] == "OK" and own["listeners"] == ["virtualOutbound"], own
    other = _ads_client(mesh, mesh.frontend, mesh.orders.spiffe_id)
    assert other["code"] == "PERMISSION_DENIED", other
    assert "is not the certificate's" in str(other["detail"])
    # A node.id is client text: the refusal's log line carries only our own facts.
    hostile = _ads_client(mesh, mesh.frontend, "evil-node-\x1b[2J")
    assert hostile["code"] == "PERMISSION_DENIED", hostile
    log = mesh.reg.log_text()
    assert f"node.id is not the certificate's {mesh.frontend.spiffe_id}" in log
    assert "evil-node" not in log


def test_agent_api_settings_and_proven_address(mesh: Mesh) -> None:
    status, settings = mesh.orders.api("GET", "/v1/workload/settings")
    assert status == 200
    assert settings["probe"] == {"httpGet": {"path": "/", "port": 9090}, "periodSeconds": 1,
                                 "timeoutSeconds": 1, "successThreshold": 1,
                                 "failureThreshold": 3}
    assert settings["ports"] == {"http": 9090} and settings["xds"] == {"port": XDS_PORT}
    assert {"hostname": "orders.shop.mesh", "vip": ORDERS_VIP,
            "ports": [{"name": "http", "number": 9090, "protocol": "HTTP"}]} in settings["names"]
    # Evidence that proves an address (EC2's privateIp) pins the primary address.
    rows = json.loads(mesh.cli("workloads", "list", "--json").stdout)
    wid = next(r["id"] for r in rows if r["group"] == "frontend")
    mesh.reg.sql("UPDATE mesh_workload_status SET evidence_addresses = '[\"10.77.0.1\"]'"
                 " WHERE workload_id = ?", (wid,))
    mesh.frontend.report()  # the proven address: accepted
    status, body = mesh.frontend.api("POST", "/v1/workload/status",
                                     json={"addresses": ["10.9.9.9"], "health": "healthy"})
    assert (status, body["reason"]) == (403, "address_mismatch")
    status, body = mesh.frontend.api("POST", "/v1/workload/status",
                                     json={"addresses": ["10.77.0.1"], "health": "sick"})
    assert (status, body["reason"]) == (400, "bad_request")
    # Without the workload certificate there is no catalog access.
    def anonymous() -> int:
        ctx = ssl.create_default_context(cafile=str(mesh.reg.ca_file))
        return httpx.get(f"{mesh.reg.url}/v1/workload/settings", verify=ctx,
                         timeout=5).status_code
    assert mesh.frontend.in_ns(anonymous) == 401
