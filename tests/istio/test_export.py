"""``mesh-registrar export istio`` checked by the real istiod: every exported
resource loads from ``--configDir`` with nothing rejected, the registry lists
the service with the healthy VMs as endpoints, and ``--watch`` keeps the
directory current as workloads come, turn healthy and go."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.istiod import Istiod, istiod
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.test_renew import enrol, mtls

__all__ = ["istiod"]
pytestmark = [pytest.mark.istio, pytest.mark.netns]
REPO = Path(__file__).resolve().parents[2]
NS = "vm-export"
GROUPS = [
    {"name": "web", "namespace": NS, "service_account": "web-sa", "cert_ttl": "1h",
     "labels": {"app": "web"}, "ports": {"http": 8080}, "network": "vm-net",
     "probe": {"httpGet": {"path": "/ready", "port": 8080}}},
    {"name": "db", "namespace": NS, "service_account": "db-sa", "cert_ttl": "1h",
     "labels": {"app": "db"}},
]


def report(reg: RegistrarProcess, pair: tuple[Path, Path], address: str, health: str) -> None:
    with mtls(reg, *pair) as c:
        status, body = calls.post(c, "/v1/workload/status",
                                  json={"addresses": [address], "health": health})
    assert status == 200, body


def exported(out: Path) -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}


def load_into_istiod(istiod: Istiod, out: Path) -> list[str]:
    names = []
    for path in sorted(out.glob("*.yaml")):
        istiod.write_config(path.name, path.read_text())
        names.append(path.name)
    return names


def test_export_is_accepted_by_istiod_and_kept_current(
        istiod: Istiod, registrar_factory: Any, tmp_path: Path) -> None:
    reg: RegistrarProcess = registrar_factory(config={"groups": GROUPS})
    reg.cli("service", "add", "web", "--host", "web.vm-export.mesh", "--port", "http:80/HTTP",
            "--selector", "app=web", "--vip", "240.240.0.10", "--allow", "db")
    web1, web2 = enrol(reg, tmp_path / "w1"), enrol(reg, tmp_path / "w2")
    db = enrol(reg, tmp_path / "db", group="db")
    report(reg, web1, "10.77.0.11", "healthy")
    report(reg, web2, "10.77.0.12", "unhealthy")  # not exported: istiod must not route to it
    report(reg, db, "10.77.0.21", "healthy")
    out = tmp_path / "export"
    reg.cli("export", "istio", "--out", str(out))
    docs = exported(out)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs.values())
    entries = {d["spec"]["address"] for d in docs.values() if d["kind"] == "WorkloadEntry"}
    assert entries == {"10.77.0.11", "10.77.0.21"}, kinds
    assert [k for k, _ in kinds].count("WorkloadGroup") == 2
    [se] = [d for d in docs.values() if d["kind"] == "ServiceEntry"]
    assert se["spec"]["addresses"] == ["240.240.0.10"]
    assert se["spec"]["ports"] == [{"number": 80, "name": "http", "protocol": "HTTP",
                                    "targetPort": 8080}]
    [web_entry] = [d for d in docs.values() if d["kind"] == "WorkloadEntry"
                   and d["spec"]["address"] == "10.77.0.11"]
    assert web_entry["spec"] == {"address": "10.77.0.11", "labels": {"app": "web"},
                                 "serviceAccount": "web-sa", "network": "vm-net",
                                 "ports": {"http": 8080}}

    offset = len(istiod.log_text())
    names = load_into_istiod(istiod, out)
    try:
        for doc in docs.values():
            istiod.wait_config(doc["kind"], NS, doc["metadata"]["name"])
        registry = istiod.debug_json("/debug/registryz")
        assert "web.vm-export.mesh" in {svc.get("hostname") for svc in registry}
        deadline = time.monotonic() + 20
        shards = ""
        while time.monotonic() < deadline and "10.77.0.11" not in shards:
            shards = istiod.debug("/debug/endpointShardz")[1]
            time.sleep(0.5)
        assert "10.77.0.11" in shards and "10.77.0.12" not in shards
        assert istiod.rejections(offset) == []

        # --watch: web2 turns healthy -> its entry appears; web1 is evicted -> its file goes.
        watch = subprocess.Popen(
            [sys.executable, "-m", "registrar", "export", "istio", "--config",
             str(reg.config_path), "--out", str(out), "--watch", "--interval", "200ms"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            report(reg, web2, "10.77.0.12", "healthy")
            rows = json.loads(reg.cli("workloads", "list", "--json").stdout)
            first_web = min(int(r["id"]) for r in rows if r["spiffe_id"].endswith("/web-sa"))
            reg.cli("workloads", "evict", str(first_web))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                addrs = {d["spec"]["address"] for d in exported(out).values()
                         if d["kind"] == "WorkloadEntry"}
                if addrs == {"10.77.0.12", "10.77.0.21"}:
                    break
                time.sleep(0.2)
            assert addrs == {"10.77.0.12", "10.77.0.21"}
        finally:
            watch.terminate()
            assert watch.wait(10) == 0
    finally:
        for name in names:
            istiod.remove_config(name)
    for doc in docs.values():
        istiod.wait_config(doc["kind"], NS, doc["metadata"]["name"], present=False)


NS_E = "vm-export-traffic"
HOST_E, VIP_E = "esvc.vm-export-traffic.mesh", "10.99.5.10"


def test_mesh_agent_vm_reaches_a_vm_service_through_the_exported_service_entry(
        istiod: Istiod, registrar_factory: Any, mesh_agent_vm: Any, tmp_path: Path) -> None:
    """The ServiceEntry and WorkloadEntry istiod routes by come only from the export:
    the server VM's address reaches the registrar as its workload's health report."""
    from tests.istio.test_mesh_traffic import wait_entry

    group = {"name": "esvc", "namespace": NS_E, "service_account": "esvc-sa",
             "cert_ttl": "1h", "labels": {"app": "esvc"}, "ports": {"http": 8080}}
    reg: RegistrarProcess = registrar_factory(config={"groups": [group]})
    reg.cli("service", "add", "esvc", "--host", HOST_E, "--port", "http:80/HTTP",
            "--selector", "app=esvc", "--vip", VIP_E)
    server = mesh_agent_vm("eserver", NS_E, "esvc-sa", labels={"app": "esvc"}, capture=True)
    client = mesh_agent_vm("eclient", NS_E, "eclient-sa", capture=True)
    report(reg, enrol(reg, tmp_path / "esvc", group="esvc"), server.vm.ip, "healthy")
    out = tmp_path / "export"
    reg.cli("export", "istio", "--out", str(out))
    docs = exported(out)
    assert sorted(d["kind"] for d in docs.values()) == [
        "ServiceEntry", "WorkloadEntry", "WorkloadGroup"], docs
    names = load_into_istiod(istiod, out)
    try:
        for doc in docs.values():
            istiod.wait_config(doc["kind"], NS_E, doc["metadata"]["name"])
        client.vm.set_hosts(f"{VIP_E} {HOST_E}\n")
        server.serve(8080, "esvc")
        server.start()
        client.start()
        server.wait_ready()
        client.wait_ready()
        # The app calls the exported service's port 80; istiod's config (from the
        # export) sends it to the server VM's 8080 over mTLS.
        body = json.loads(client.vm.call_until(f"http://{HOST_E}/via-export", 200))
        assert body["app"] == "esvc", body
        xfcc = body["headers"].get("x-forwarded-client-cert", "")
        assert f"URI={client.spiffe_id}" in xfcc and f"By={server.spiffe_id}" in xfcc, body
        sent = wait_entry(client.access_log, "/via-export")
        assert sent["cluster"].rstrip(";") == f"outbound|80||{HOST_E}", sent
        assert sent["upstream_peer"] == server.spiffe_id, sent
        received = wait_entry(server.access_log, "/via-export")
        assert received["peer"] == client.spiffe_id, received
        assert client.stop() == 0 and server.stop() == 0
    finally:
        for name in names:
            istiod.remove_config(name)
