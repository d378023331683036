"""Issue 11 end to end with real daemons (harness: tests/integration/xds_mesh.py).

``frontend``'s app calls ``http://orders.shop.mesh:9090/`` by name: the DNS
proxy answers the VIP, capture sends the call to Envoy, mTLS on the wire to
``orders-b`` or ``orders-c`` (EDS from the registrar, fed by the agents' health
reports), whose access logs name frontend's SPIFFE ID. ``intruder`` (a real
agent of a group nobody allows) is refused by RBAC, the reason in the
server-side access log. Then b's app stops: b's probe fails, b leaves
frontend's EDS within probe period x failureThreshold + 1 s, and calls keep
succeeding on c. The registrar dies and comes back: traffic goes on, Envoys
resync. A second test SIGTERMs one backend's agent under continuous calls:
not one fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.integration.xds_mesh import (
    FAILURES,
    HERE,
    PERIOD,
    VIP,
    Load,
    Mesh,
    app_curl,
    eds_hosts,
    envoy_path,
    getent,
    mesh,
    root,
    state_dirs,
    wait_for,
)

__all__ = ["envoy_path", "mesh", "root", "state_dirs"]
pytestmark = pytest.mark.netns
URL = "http://orders.shop.mesh:9090"
FRONTEND_ID = "spiffe://example.org/ns/shop/sa/frontend"
INTRUDER_ID = "spiffe://example.org/ns/shop/sa/intruder"


def sniff(m: Mesh, seconds: float, marker: str) -> subprocess.Popen[str]:
    """What crosses the hub's bridge ports to or from :9090 (tests/integration/wire_sniff.py)."""
    proc = subprocess.Popen(["ip", "netns", "exec", m.hub.ns, sys.executable,
                             str(HERE / "wire_sniff.py"), "any", "9090", str(seconds), marker],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_call_by_name_balanced_then_failed_backend_leaves_eds(mesh: Mesh) -> None:
    m = mesh
    vms, apps, resolv = m.vms, m.apps, m.resolv
    fe, b, c = vms["frontend"], vms["orders-b"], vms["orders-c"]
    for name in vms:
        assert "sidecar mode: xds" in m.agent(name).log_text(), m.agent(name).log_text()[-3000:]
    wait_for(lambda: eds_hosts(fe) == {b.address, c.address}, 30, "both backends in EDS")
    restarts = m.agent("frontend").status()["sidecar"]["restarts"]

    # DNS: the mesh name is the VIP (the agent's proxy, through capture); other names
    # go on to the VM's nameserver (the hub's test resolver).
    assert getent(fe, resolv, "orders.shop.mesh") == VIP
    assert getent(fe, resolv, "example.org") == "192.0.2.80"

    # By name, through DNS -> VIP -> capture -> mTLS, balanced over b and c. The VIP
    # is routed nowhere (the hub has no route for it): only capture can carry it.
    wire = sniff(m, 8.0, "/wire-marker")
    for _ in range(20):
        code, body = app_curl(fe, resolv, f"{URL}/wire-marker")
        assert (code, body) == (0, "app:9090:/wire-marker"), (code, body)
    hits = {name: sum(s.path == "/wire-marker" for s in app.seen) for name, app in apps.items()}
    assert all(n > 0 for n in hits.values()) and sum(hits.values()) == 20, hits
    out, _ = wire.communicate(timeout=20)
    seen = json.loads(out.strip().splitlines()[-1])
    print(f"on the wire to/from :9090: {seen}")
    # TLS records, and the request path never in clear on the link.
    assert seen["segments"] > 0 and seen["tls"] > 0 and not seen["clear"], seen
    # Inbound traffic reached the apps through Envoy (127.0.0.6), never directly.
    assert {s.client for app in apps.values() for s in app.seen
            if s.path == "/wire-marker"} == {"127.0.0.6"}
    # Both backends' Envoys log the caller's SPIFFE ID (from mTLS); flushed late.
    for name in ("orders-b", "orders-c"):
        wait_for(lambda name=name: f"inbound peer={FRONTEND_ID}" in m.agent(name).log_text(),
                 15, f"frontend's identity in {name}'s access log")

    # intruder: a real agent of a group no service allows. The same name, the same
    # VIP, refused by the backends' RBAC; the reason is in their access logs.
    assert getent(vms["intruder"], resolv, "orders.shop.mesh") == VIP
    for _ in range(3):
        code, body = app_curl(vms["intruder"], resolv, f"{URL}/intruder")
        assert code != 0 and body == "", (code, body)
    assert not any(s.path == "/intruder" for app in apps.values() for s in app.seen)
    refused = re.compile(rf"inbound peer={re.escape(INTRUDER_ID)} .*details=rbac_access_denied")
    wait_for(lambda: any(refused.search(m.agent(n).log_text()) for n in ("orders-b", "orders-c")),
             15, "intruder's RBAC denial in a backend's access log")

    # b's app stops: its probe fails; b leaves EDS within period x threshold + 1 s.
    apps["orders-b"].stop()
    stopped = time.monotonic()
    wait_for(lambda: eds_hosts(fe) == {c.address}, PERIOD * FAILURES + 1.0 + 5, "b leaves")
    took = time.monotonic() - stopped
    print(f"orders-b app stopped -> gone from frontend's EDS in {took:.2f}s")
    assert took <= PERIOD * FAILURES + 1.0, took
    for _ in range(10):
        assert app_curl(fe, resolv, f"{URL}/after") == (0, "app:9090:/after")
    assert m.agent("frontend").status()["sidecar"]["restarts"] == restarts  # pushes only

    # The registrar dies: calls go on with the last config; back, every Envoy resyncs
    # within the ADS bootstrap's capped reconnect backoff (5 s) plus a margin.
    m.reg.kill()
    assert app_curl(fe, resolv, f"{URL}/outage") == (0, "app:9090:/outage")
    time.sleep(2)
    offset = len(m.reg.log_text())
    m.reg.start()
    opened = re.compile(r"xds stream \d+ opened node=spiffe://example.org/ns/shop/sa/")
    resync = wait_for(lambda: len(opened.findall(m.reg.log_text()[offset:])) == 4, 15,
                      "resync")
    print(f"registrar restarted -> 4 Envoys resynced in {resync:.2f}s")
    assert resync <= 6.0, resync  # Envoy's default backoff measured 8.9 s here
    assert m.agent("frontend").status()["sidecar"]["restarts"] == restarts

    # SIGTERM c: draining is reported first, then capture off, then Envoy drains.
    assert m.agent("orders-c").stop(timeout=30) == 0
    log = m.agent("orders-c").log_text()
    assert log.index("health reported: draining") < log.index("capture removed"), log[-3000:]


def test_sigterm_under_continuous_calls_fails_none(mesh: Mesh) -> None:
    """Drain: the agent reports draining, the registrar drops the endpoint from EDS
    and pushes, and only then do capture and Envoy go: no caller sees a failure."""
    m = mesh
    fe, b, c = m.vms["frontend"], m.vms["orders-b"], m.vms["orders-c"]
    wait_for(lambda: eds_hosts(fe) == {b.address, c.address}, 30, "both backends in EDS")
    load = Load(fe, m.resolv, f"{URL}/load", m.work)
    try:
        wait_for(lambda: sum(s.path == "/load" for s in m.apps["orders-c"].seen) >= 5
                 and sum(s.path == "/load" for s in m.apps["orders-b"].seen) >= 5, 60,
                 "calls reaching both backends")
        before = len(load.results())
        started = time.monotonic()
        assert m.agent("orders-c").stop(timeout=30) == 0
        print(f"orders-c agent stopped (SIGTERM -> exit) in {time.monotonic() - started:.2f}s")
        at_exit = len(load.results())
        # Calls go on after c's Envoy is gone (c's app still listens, unreachable
        # through the mesh now): all of them on b.
        wait_for(lambda: len(load.results()) >= at_exit + 10, 30, "calls after the stop")
    finally:
        results = load.stop()
    failed = [line for line in results if line != "200 0"]
    print(f"calls: {len(results)} ({before} before SIGTERM, {at_exit - before} during the "
          f"stop, {len(results) - at_exit} after), failed: {len(failed)} {failed[:5]}")
    assert len(results) >= 20 and not failed, failed
    assert eds_hosts(fe) == {b.address}
    log = m.agent("orders-c").log_text()
    assert log.index("health reported: draining") < log.index("capture removed"), log[-3000:]
