"""Must-show 1-4 of issue 4, with real Envoys in network namespaces.

VM 10.77.0.1: app on 127.0.0.1:8080 and :9090, capture-style REDIRECT of both
ports to Envoy's 15006. Peer 10.77.0.2: its own Envoy whose outbound listener
originates mTLS to the VM's app, client traffic redirected to 15001 by uid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.proxy.config import ProxyConfig
from agent.registrar_client.client import RegistrarClient
from agent.sidecar.config import OutboundService, SidecarConfig
from agent.sidecar.install import ConfigRejected, install_bootstrap
from agent.sidecar.process import EnvoyNotFound, SubprocessRunner
from agent.sidecar.render import render_bootstrap
from agent.sidecar.supervisor import EnvoyState
from tests.fixtures.registrar import Group, RegistrarProcess
from tests.sidecar.apps import EchoApp, TlsClient, http_get
from tests.sidecar.conftest import redirect_inbound, redirect_outbound
from tests.sidecar.netns import HostPair, call_in
from tests.sidecar.node import PROXY, Node
from tests.sidecar.pki import MeshCA

TD = "example.org"
VM_ID = f"spiffe://{TD}/ns/shop/sa/vm-app"
PEER_ID = f"spiffe://{TD}/ns/shop/sa/frontend"

pytestmark = pytest.mark.netns


@dataclass
class Mesh:
    hosts: HostPair
    registrar: RegistrarProcess
    client: RegistrarClient
    vm: Node
    peer: Node
    apps: list[EchoApp]

    @property
    def app(self) -> EchoApp:
        return self.apps[0]

    def registrar_client(self, tmp: Path, group: str) -> TlsClient:
        """A raw TLS client on the peer host with an identity the registrar issued."""
        from agent.credentials import CredentialStore
        from tests.sidecar.identity import RegistrarIdentity

        store = CredentialStore(tmp)
        identity = RegistrarIdentity(self.client, self.registrar.create_token(group), store, group)
        creds, _ = asyncio.run(identity.refresh())
        return TlsClient(creds.chain_path, creds.key_path, self.registrar.ca_file)

    def foreign_client(self, tmp: Path, spiffe_id: str) -> TlsClient:
        """The right name from the wrong CA."""
        ca = MeshCA(TD)
        leaf = ca.issue(spiffe_id)
        tmp.mkdir(exist_ok=True)
        (tmp / "c.pem").write_bytes(leaf.cert_pem)
        (tmp / "k.pem").write_bytes(leaf.key_pem)
        return TlsClient(tmp / "c.pem", tmp / "k.pem", self.registrar.ca_file)

    def through_mesh(self, path: str) -> tuple[int, str]:
        return call_in(self.hosts.peer.name, lambda: http_get(self.hosts.vm.address, 8080, path))


@pytest.fixture
def mesh(hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess], envoy_path: Path,
         state_dirs: Callable[[str], Path]) -> Iterator[Mesh]:
    registrar = registrar_factory(trust_domain=TD, groups={
        "vm": Group("shop", "vm-app", 30.0, {"app": "vm-app"}),
        "frontend": ("shop", "frontend", 3600),
        "intruder": ("shop", "intruder", 3600),
    })
    client = RegistrarClient(registrar.url, registrar.ca_file, timeout=10)
    common = {"enabled": True, "envoy_path": envoy_path, "drain_time": 0.0,
              "proxy": ProxyConfig(uid=PROXY.uid, gid=PROXY.gid)}
    vm = Node("vm", hosts.vm.name, state_dirs("vm"), client, registrar.create_token("vm"),
              SidecarConfig(app_ports=(8080, 9090), allowed_peers=(PEER_ID,),
                            **common))  # type: ignore[arg-type]
    peer = Node("peer", hosts.peer.name, state_dirs("peer"), client,
                registrar.create_token("frontend"), SidecarConfig(
        outbound_services=(OutboundService("vm-app", hosts.vm.address, 8080, VM_ID),),
        **common))  # type: ignore[arg-type]
    apps = [EchoApp(hosts.vm.name, 8080), EchoApp(hosts.vm.name, 9090)]
    redirect_inbound(hosts, "8080,9090")
    redirect_outbound(hosts, hosts.vm.address, 8080, PROXY.uid)
    try:
        for app in apps:
            app.start()
        vm.start()
        peer.start()
        assert vm.mesh is not None and vm.mesh.spiffe_id == VM_ID
        assert peer.mesh is not None and peer.mesh.spiffe_id == PEER_ID
        yield Mesh(hosts, registrar, client, vm, peer, apps)
    finally:
        for node in (peer, vm):
            node.stop()
        for app in apps:
            if hasattr(app, "server"):
                app.stop()


def test_peer_reaches_vm_app_over_mtls_and_vm_logs_peer_identity(mesh: Mesh) -> None:
    status, body = mesh.through_mesh("/hello")

    assert (status, body) == (200, "app:8080:/hello")
    assert [s.path for s in mesh.app.seen] == ["/hello"]
    # Envoy reaches the app from 127.0.0.6, which capture exempts (Istio's contract).
    assert mesh.app.seen[0].client == "127.0.0.6"
    deadline = time.monotonic() + 5
    while not any("inbound" in ln and PEER_ID in ln
                  for ln in mesh.vm.access.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    inbound = [ln for ln in mesh.vm.access.lines if ln.startswith("[") and " inbound " in ln]
    assert any(f"peer={PEER_ID}" in ln and "cluster=inbound|8080" in ln
               for ln in inbound), mesh.vm.access.lines
    # And the peer's Envoy saw the VM's identity on its side.
    deadline = time.monotonic() + 5
    while not any(f"peer={VM_ID}" in ln for ln in mesh.peer.access.lines):
        assert time.monotonic() < deadline, mesh.peer.access.lines
        time.sleep(0.05)


def test_envoy_runs_as_proxy_user_without_capabilities(mesh: Mesh) -> None:
    assert mesh.vm.supervisor is not None
    pid = mesh.vm.supervisor.status().pid
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split() == [str(PROXY.uid)] * 4
    assert fields["Gid"].split() == [str(PROXY.gid)] * 4
    assert fields["Groups"].strip() == ""
    assert int(fields["CapEff"].strip(), 16) == 0
    assert int(fields["CapPrm"].strip(), 16) == 0
    key = mesh.vm.paths.key.resolve()
    assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (PROXY.uid, 0o600)
    agent_key = mesh.vm.store.current_link.resolve() / "key.pem"
    assert (agent_key.stat().st_uid, agent_key.stat().st_mode & 0o777) == (0, 0o600)


def _refused(client: TlsClient, host: str) -> str:
    """Why a TLS connection to the VM failed (it must fail)."""
    try:
        _, data = client.served(host, 9090, payload=b"GET / HTTP/1.0\r\n\r\n")
    except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
        return type(exc).__name__
    assert data == b"", f"refused peer got an answer: {data[:80]!r}"
    return "closed"


def test_disallowed_identity_and_plaintext_are_refused(mesh: Mesh, tmp_path: Path) -> None:
    vm = mesh.hosts.vm.address
    allowed = mesh.registrar_client(tmp_path / "ok", "frontend")
    intruder = mesh.registrar_client(tmp_path / "evil", "intruder")  # same CA, not allowed
    stranger = mesh.foreign_client(tmp_path / "other", PEER_ID)  # allowed name, wrong CA

    # Control: the same path works for the allowed identity.
    _, data = call_in(mesh.hosts.peer.name,
                      lambda: allowed.served(vm, 9090, payload=b"GET /ok HTTP/1.0\r\n\r\n"))
    assert b"app:9090:/ok" in data

    for client in (intruder, stranger):
        call_in(mesh.hosts.peer.name, lambda c=client: _refused(c, vm))  # type: ignore[misc]

    def plaintext() -> bytes:
        with socket.create_connection((vm, 9090), timeout=5) as sock:
            sock.sendall(b"GET /plain HTTP/1.0\r\n\r\n")
            try:
                return sock.recv(1024)
            except ConnectionResetError:
                return b""
    assert call_in(mesh.hosts.peer.name, plaintext) == b""

    assert [s.path for s in mesh.apps[1].seen] == ["/ok"]
    stats = mesh.vm.loop.run(_stats(mesh.vm))  # type: ignore[union-attr]
    assert stats.get("listener.0.0.0.0_15006.ssl.fail_verify_san", 0) >= 1, stats
    assert stats.get("listener.0.0.0.0_15006.no_filter_chain_match", 0) >= 1, stats


async def _stats(node: Node) -> dict[str, int]:
    from agent.sidecar.admin import admin_request

    _, body = await admin_request(node.config.admin_port, "GET", "/stats?filter=15006")
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def test_rotation_under_load_zero_failures_new_cert_served(mesh: Mesh, tmp_path: Path) -> None:
    checker = mesh.registrar_client(tmp_path / "chk", "frontend")
    stop = threading.Event()
    results = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                status, body = http_get(mesh.hosts.vm.address, 8080, "/load")
                ok = status == 200 and body == "app:8080:/load"
            except OSError as exc:
                ok = False
                errors.append(repr(exc))
            results["ok" if ok else "failed"] += 1

    def served_serial() -> int:
        cert, _ = checker.served(mesh.hosts.vm.address, 9090)
        return cert.serial_number

    worker = threading.Thread(target=lambda: call_in(mesh.hosts.peer.name, load), daemon=True)
    worker.start()
    pickups = []
    try:
        for _ in range(20):
            creds = mesh.vm.rotate()  # renewal over mTLS; the group's TTL is 30 s
            swapped = time.monotonic()
            while call_in(mesh.hosts.peer.name, served_serial) != creds.leaf.serial_number:
                assert time.monotonic() - swapped < 10, "envoy did not pick up the new cert"
                time.sleep(0.02)
            pickups.append(time.monotonic() - swapped)
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
    assert results["failed"] == 0, errors[:5]
    assert results["ok"] >= 20
    print(f"rotations=20 requests={results['ok']} failed=0 "
          f"pickup max={max(pickups)*1000:.0f}ms median={sorted(pickups)[10]*1000:.0f}ms")


def test_sigkill_restarts_envoy_and_traffic_resumes(mesh: Mesh) -> None:
    supervisor = mesh.vm.supervisor
    assert supervisor is not None and mesh.vm.loop is not None
    old = supervisor.status().pid
    assert old is not None
    os.kill(old, signal.SIGKILL)

    async def restarted() -> None:
        await mesh.vm.until(lambda: supervisor.ready and supervisor.status().pid not in (old,
                                                                                          None))
    mesh.vm.loop.run(restarted())
    status = supervisor.status()
    assert status.state is EnvoyState.READY
    assert status.restarts == 1
    assert status.last_exit == "killed by SIGKILL"
    assert mesh.through_mesh("/after-kill") == (200, "app:8080:/after-kill")


def test_missing_binary_or_invalid_config_keeps_old_config_live(mesh: Mesh) -> None:
    vm, loop = mesh.vm, mesh.vm.loop
    assert loop is not None
    before = vm.paths.bootstrap.read_bytes()

    with pytest.raises(EnvoyNotFound, match="/nonexistent/envoy"):
        vm.reconfigure(envoy_path=Path("/nonexistent/envoy"), app_ports=(8080,))
    assert vm.paths.bootstrap.read_bytes() == before

    document = render_bootstrap(vm.config, vm.mesh, vm.paths)
    document["static_resources"]["listeners"][0]["bogus_field"] = 1
    with pytest.raises(ConfigRejected, match="bogus_field") as info:
        loop.run(install_bootstrap(vm.config, document, vm.paths,
                                   runner=SubprocessRunner(), user=PROXY))
    assert str(vm.paths.bootstrap) in str(info.value)
    assert vm.paths.bootstrap.read_bytes() == before
    assert not list(vm.paths.root.glob("bootstrap.candidate*"))
    # The running Envoy was never disturbed, and a restart uses the old, good file.
    assert mesh.through_mesh("/still-up") == (200, "app:8080:/still-up")
    assert vm.supervisor is not None
    loop.run(vm.supervisor.restart())
    loop.run(vm.supervisor.wait_ready(30))
    assert mesh.through_mesh("/restarted") == (200, "app:8080:/restarted")

    # New mesh settings through the daemon's facade: installed, Envoy restarted once.
    assert vm.mesh is not None
    pid = vm.supervisor.status().pid
    relabelled = dataclasses.replace(vm.mesh, labels={"version": "v2"})
    assert loop.run(vm.sidecar.configure(relabelled)) is True
    loop.run(vm.supervisor.wait_ready(30))
    assert vm.supervisor.status().pid != pid
    assert "version: v2" in vm.paths.bootstrap.read_text()
    assert loop.run(vm.sidecar.configure(relabelled)) is False  # unchanged: no restart
    assert mesh.through_mesh("/relabelled") == (200, "app:8080:/relabelled")
    assert vm.supervisor.status().restarts == 0  # requested restarts are not failures
