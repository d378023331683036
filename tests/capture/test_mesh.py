"""Must-show 2: capture with the sidecar's real Envoy and the real registrar.

An app on the VM calls the mesh peer by its plain address; capture sends it
to the VM's Envoy, which originates mTLS (sniffed on the wire: no plaintext
leaves the VM). A plaintext client from the peer's namespace can reach the
VM's app port before capture, and cannot once capture is on.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.probe import SubprocessProber
from agent.capture.runner import SubprocessRunner
from agent.proxy.config import ProxyConfig
from agent.registrar_client.client import RegistrarClient
from agent.sidecar.config import OutboundService, SidecarConfig
from tests.capture.netns import Topology
from tests.fixtures.registrar import Group, RegistrarProcess
from tests.sidecar.apps import EchoApp, http_get
from tests.sidecar.conftest import envoy_path, hosts, root, state_dirs
from tests.sidecar.netns import HostPair, call_in, sh
from tests.sidecar.node import PROXY, Node

__all__ = ["envoy_path", "hosts", "root", "state_dirs"]  # fixtures reused from the sidecar tests
TD = "example.org"
VM_ID = f"spiffe://{TD}/ns/shop/sa/vm-app"
PEER_ID = f"spiffe://{TD}/ns/shop/sa/frontend"
MARKER = "/plaintext-marker-4f1c"

pytestmark = pytest.mark.netns


def capture(ns: str, backend: str, inbound: tuple[int, ...], state: Path) -> CaptureController:
    runner = SubprocessRunner(["ip", "netns", "exec", ns])
    config = CaptureConfig(enabled=True, backend=backend, inbound_ports=inbound,
                           proxy=ProxyConfig(uid=PROXY.uid, gid=PROXY.gid))
    return CaptureController(config, state_dir=state, runner=runner,
                             prober=SubprocessProber(runner, sys.executable))


class Sniffer:
    """Every byte crossing one interface of a namespace (AF_PACKET), on a thread."""

    def __init__(self, ns: str, iface: str) -> None:
        self.data = bytearray()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: call_in(ns, lambda: self._run(iface)),
                                        daemon=True)

    def _run(self, iface: str) -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
            sock.bind((iface, 0))
            sock.settimeout(0.1)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    self.data += sock.recv(65535)
                except TimeoutError:
                    continue

    def __enter__(self) -> Sniffer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def mesh(hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess], envoy_path: Path,
         state_dirs: Callable[[str], Path], tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    registrar = registrar_factory(trust_domain=TD, groups={
        "vm": Group("shop", "vm-app", 3600.0, {"app": "vm-app"}),
        "frontend": ("shop", "frontend", 3600)})
    client = RegistrarClient(registrar.url, registrar.ca_file, timeout=10)
    common = {"enabled": True, "envoy_path": envoy_path, "drain_time": 0.0,
              "proxy": ProxyConfig(uid=PROXY.uid, gid=PROXY.gid)}
    vm = Node("vm", hosts.vm.name, state_dirs("vm"), client, registrar.create_token("vm"),
              SidecarConfig(app_ports=(9090,), allowed_peers=(PEER_ID,), outbound_services=(
                  OutboundService("frontend", hosts.peer.address, 8080, PEER_ID),),
                  **common))  # type: ignore[arg-type]
    peer = Node("peer", hosts.peer.name, state_dirs("peer"), client,
                registrar.create_token("frontend"),
                SidecarConfig(app_ports=(8080,), allowed_peers=(VM_ID,),
                              **common))  # type: ignore[arg-type]
    # Like a real VM: a default route (the probe's documentation address must route).
    hosts.vm.ip("route", "add", "default", "via", hosts.peer.address)
    peer_app = EchoApp(hosts.peer.name, 8080)
    peer_app.start()
    try:
        vm.start()
        peer.start()
        yield vm, peer
    finally:
        for node in (peer, vm):
            node.stop()
        peer_app.stop()


def test_app_call_leaves_as_mtls_and_plaintext_cannot_reach_app(
        mesh: tuple[Node, Node], hosts: HostPair, tmp_path: Path) -> None:
    vm, peer = mesh
    topo = Topology(vm=hosts.vm.name, peer=hosts.peer.name)
    try:
        topo.serve(hosts.vm.name, "app:4:0.0.0.0:9090")  # reachable by anyone without capture
        plain = f"{hosts.vm.address}:9090|GET / HTTP/1.0\r\n\r\n"
        # Proxy uid on the peer: its own capture lets it out untouched, as plaintext.
        assert topo.connect(hosts.peer.name, PROXY.uid, PROXY.gid, plain) == ["app orig=-"]

        vm_capture = capture(hosts.vm.name, "iptables-nft", (9090,), tmp_path / "vm")
        peer_capture = capture(hosts.peer.name, "nftables", (8080,), tmp_path / "peer")
        asyncio.run(vm_capture.apply())
        asyncio.run(peer_capture.apply())
        try:
            veth = sh("ip", "-n", hosts.vm.name, "-o", "link", "show", "type", "veth"
                      ).stdout.split(":")[1].strip().split("@")[0]
            with Sniffer(hosts.vm.name, veth) as wire:
                status, body = call_in(hosts.vm.name, lambda: http_get(
                    hosts.peer.address, 8080, MARKER))
                time.sleep(0.2)
            assert (status, body) == (200, f"app:8080:{MARKER}")
            assert MARKER.encode() not in wire.data  # nothing left the VM in plaintext
            assert b"\x16\x03" in wire.data  # ... but a TLS handshake did
            deadline = time.monotonic() + 5
            while not any(f"peer={VM_ID}" in line for line in peer.access.lines):
                assert time.monotonic() < deadline, peer.access.lines
                time.sleep(0.05)
            assert any(f"peer={PEER_ID}" in line for line in vm.access.lines), vm.access.lines

            answers = topo.connect(hosts.peer.name, PROXY.uid, PROXY.gid, plain)
            assert not answers[0].startswith("app"), answers  # Envoy refused the plaintext
        finally:
            asyncio.run(peer_capture.remove())
            asyncio.run(vm_capture.remove())
        assert topo.connect(hosts.peer.name, PROXY.uid, PROXY.gid, plain) == ["app orig=-"]
    finally:
        for proc in topo.procs:
            proc.kill()
            proc.wait()
