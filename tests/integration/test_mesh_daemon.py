"""The whole agent as users run it, twice: a VM and a mesh peer, each a real
`mesh-agent run` in its own network namespace with its sidecar (real Envoy)
and traffic capture on, identities from a real registrar. A plain HTTP call
from the peer reaches the VM's app through mTLS; plaintext cannot; the
registrar stays direct; SIGTERM takes capture off before Envoy stops. The VM
uses the proxy: section, the peer a config written before it existed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess
from tests.fixtures.registrar import RegistrarProcess, free_port
from tests.sidecar.apps import EchoApp
from tests.sidecar.conftest import envoy_path, hosts, root, state_dirs
from tests.sidecar.netns import HostPair

__all__ = ["envoy_path", "hosts", "root", "state_dirs"]
pytestmark = pytest.mark.netns

TD = "example.org"
VM_ID = f"spiffe://{TD}/ns/shop/sa/vm-app"
PEER_ID = f"spiffe://{TD}/ns/shop/sa/frontend"
OLD_PROXY = {"proxy_uid": 1337, "proxy_gid": 1337}  # in sidecar: and capture: (deprecated)
VM6, PEER6 = "fd00:77::1", "fd00:77::2"


def dataplane(envoy: Path, *, app_port: int, allowed: str, backend: str,
              outbound: dict[str, Any] | None = None, old_shape: bool = False
              ) -> dict[str, Any]:
    old = OLD_PROXY if old_shape else {}
    return {
        **({} if old_shape else {"proxy": {"uid": 1337, "gid": 1337}}),
        "sidecar": {"enabled": True, "envoy_path": str(envoy), "app_ports": [app_port],
                    "allowed_peers": [allowed], "drain_time": "1s",
                    "outbound_services": outbound or {}, **old},
        "capture": {"enabled": True, "backend": backend, "inbound_ports": [app_port], **old},
    }


def ns_run(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=30, check=False)


def nat_rules(ns: str) -> str:
    """iptables' nat table and the whole nft ruleset, minus comments and counters."""
    text = ns_run(ns, "iptables-save", "-t", "nat").stdout + ns_run(ns, "nft", "list",
                                                                    "ruleset").stdout
    return "\n".join(line.split(" [")[0] for line in text.splitlines()
                     if not line.startswith("#"))


def vm_registrar(hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess]
                 ) -> RegistrarProcess:
    """A registrar in the peer's namespace that knows the VM's group."""
    return registrar_factory(trust_domain=TD, host=hosts.peer.address, port=free_port(),
                             prefix=["ip", "netns", "exec", hosts.peer.name],
                             groups={"vm": ("shop", "vm-app", 3600)})


def run_to_exit(agent: AgentProcess, timeout: float) -> tuple[int | None, str]:
    """Start ``agent`` and wait for it to end by itself: (exit code or None, its log)."""
    agent.start()
    try:
        code: int | None = agent.wait_exit(timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        agent.kill()
    return code, agent.log_text()


@pytest.fixture
def mesh(hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess], envoy_path: Path,
         state_dirs: Callable[[str], Path]) -> Iterator[tuple[AgentProcess, AgentProcess, Any]]:
    reg = registrar_factory(trust_domain=TD, host=hosts.peer.address,
                            port=free_port(), prefix=["ip", "netns", "exec", hosts.peer.name],
                            groups={"vm": ("shop", "vm-app", 3600),
                                    "frontend": ("shop", "frontend", 3600)})
    app = EchoApp(hosts.vm.name, 9090)
    app.start()
    vm = AgentProcess(state_dirs("vm"), reg, token=reg.create_token("vm"), netns=hosts.vm.name,
                      extra=dataplane(envoy_path, app_port=9090, allowed=PEER_ID,
                                      backend="iptables-nft"))
    peer = AgentProcess(state_dirs("peer"), reg, token=reg.create_token("frontend"),
                        netns=hosts.peer.name,
                        extra=dataplane(envoy_path, app_port=8080, allowed=VM_ID,
                                        backend="nftables", old_shape=True, outbound={
                                            "vm-app": {"address": f"{hosts.vm.address}:9090",
                                                       "spiffe_id": VM_ID},
                                            "vm-app6": {"address": f"[{VM6}]:9090",
                                                        "spiffe_id": VM_ID}}))
    # Like a real dual-stack VM: IPv6 addresses and default routes for both
    # families (capture's probes need a route).
    for host, mine, other, other4 in ((hosts.vm, VM6, PEER6, hosts.peer.address),
                                      (hosts.peer, PEER6, VM6, hosts.vm.address)):
        dev = subprocess.run(["ip", "-n", host.name, "-o", "link", "show", "type", "veth"],
                             capture_output=True, text=True, check=True
                             ).stdout.split(":")[1].strip().split("@")[0]
        host.ip("-6", "addr", "add", f"{mine}/64", "dev", dev, "nodad")
        host.ip("route", "add", "default", "via", other4)
        host.ip("-6", "route", "add", "default", "via", other)
    try:
        yield vm, peer, app
    finally:
        for agent in (peer, vm):
            agent.kill()
        app.stop()


def test_two_agents_talk_mtls_and_stop_cleanly(mesh: tuple[AgentProcess, AgentProcess, Any],
                                               hosts: HostPair) -> None:
    vm, peer, app = mesh
    registrar = vm.config["registrar"]["url"].removeprefix("https://")
    address, port = registrar.rsplit(":", 1)
    assert address == hosts.peer.address  # reached through the VM's captured interface
    baseline = nat_rules(hosts.vm.name)
    started = time.monotonic()
    vm.start()
    vm.wait_ready(60)
    vm_ready_after = time.monotonic() - started
    peer.start()
    peer.wait_ready(60)
    status = vm.status()
    assert status["spiffe_id"] == VM_ID
    assert status["conditions"] == {"sidecar": True, "capture": True}
    assert status["sidecar"]["state"] == "ready"
    assert "MESH_" in nat_rules(hosts.vm.name)
    # The registrar is exempt (the VM renews even with Envoy down), nothing else of the peer's.
    assert f"-A MESH_OUTPUT -d {address}/32 -p tcp -m tcp --dport {port} -j RETURN" in (
        nat_rules(hosts.vm.name))
    assert f"capture exempts the control plane: registrar {address}/32 port {port}" in (
        vm.log_text())
    # The peer's config predates proxy:; it works, and says where the old keys are.
    assert "capture.proxy_uid: is deprecated (use: proxy.uid instead)" in peer.log_text()
    assert "is deprecated" not in vm.log_text()
    print(f"VM agent start -> READY with Envoy and capture: {vm_ready_after:.2f}s")

    # A plain call from the peer: captured by the peer, mTLS between the Envoys,
    # captured inbound on the VM, delivered to the app on 127.0.0.1:9090.
    out = ns_run(hosts.peer.name, "curl", "-s", "-m", "10", f"http://{hosts.vm.address}:9090/hi")
    assert out.stdout == "app:9090:/hi", (out, vm.log_text()[-3000:])
    assert app.seen and app.seen[-1].path == "/hi"
    deadline = time.monotonic() + 5
    while f"peer={PEER_ID}" not in vm.log_text():
        assert time.monotonic() < deadline, vm.log_text()[-3000:]
        time.sleep(0.1)

    # The same over IPv6: both Envoys listen on [::] too, so captured IPv6 is served.
    out6 = ns_run(hosts.peer.name, "curl", "-s", "-m", "10", f"http://[{VM6}]:9090/hi6")
    assert out6.stdout == "app:9090:/hi6", (out6, vm.log_text()[-3000:])
    assert "capture probe IPv6: handshake" in vm.log_text()

    # Plaintext from the peer's proxy uid (exempt from the peer's capture) is refused.
    plain = ns_run(hosts.peer.name, "setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
                   "curl", "-s", "-m", "5", f"http://{hosts.vm.address}:9090/plain")
    assert plain.stdout != "app:9090:/plain"
    assert all(seen.path != "/plain" for seen in app.seen)

    # SIGTERM: capture comes off, Envoy drains and stops, exit 0, rules back to baseline.
    assert vm.stop(timeout=30) == 0
    assert nat_rules(hosts.vm.name) == baseline
    log = vm.log_text()
    assert log.index("capture removed") < log.index("caught ENVOY_SIGTERM") < log.index(
        "agent.daemon.app: stopped")
    assert peer.stop(timeout=30) == 0


def test_restart_starts_envoy_early_and_ready_waits_for_the_current_bootstrap(
        mesh: tuple[AgentProcess, AgentProcess, Any], hosts: HostPair) -> None:
    """On a restart, Envoy starts on the last run's bootstrap while credentials load
    and the registrar is asked for settings. When the new bootstrap equals the old
    one that Envoy is kept; when it differs (config changed between runs) the early
    Envoy is replaced before READY, and READY still means the current bootstrap's
    Envoy is ready and capture verified."""
    vm, _peer, _app = mesh
    vm.start()
    vm.wait_ready(60)
    assert "starting envoy early" not in vm.log_text()  # first boot: no bootstrap yet
    vm.stop(30)

    offset = len(vm.log_text())
    vm.start()
    vm.wait_ready(60)
    log = vm.log_text()[offset:]
    assert log.index("starting envoy early on the last bootstrap") < log.index(
        "using stored credentials"), log
    # Spawned before the daemon's own modules (cryptography among them) load, so
    # that loading them overlaps Envoy's start (agent.daemon.start).
    assert log.index("envoy started (pid") < log.index("daemon modules loaded"), log
    assert log.count("envoy started (pid") == 1, log  # same bootstrap: the early one is kept
    assert vm.status()["conditions"] == {"sidecar": True, "capture": True}
    vm.stop(30)

    # Changed between runs: Envoy starts early on the old file, then is replaced.
    vm.config["sidecar"]["allowed_peers"] = [PEER_ID, f"spiffe://{TD}/ns/ops/sa/debug"]
    vm.write_config()
    offset = len(vm.log_text())
    vm.start()
    vm.wait_ready(60)
    log = vm.log_text()[offset:]
    assert "starting envoy early on the last bootstrap" in log
    assert log.count("envoy started (pid") == 2, log
    bootstrap = (vm.state_dir / "envoy" / "bootstrap.yaml").read_text()
    assert f"spiffe://{TD}/ns/ops/sa/debug" in bootstrap
    # The Envoy that READY vouched for is the one on the new bootstrap.
    pid = vm.status()["sidecar"]["pid"]
    started = [line for line in log.splitlines() if "envoy started (pid" in line]
    assert f"(pid {pid}," in started[-1], (pid, started)
    assert "MESH_" in nat_rules(hosts.vm.name)


def test_capture_that_cannot_be_verified_exits_69_and_leaves_the_baseline(
        hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess],
        state_dirs: Callable[[str], Path]) -> None:
    """``capture.external_proxy: true`` with no proxy on 15001/15006: the probe
    fails, capture is rolled back, and the agent ends with 69 (the host cannot do
    it now; systemd restarts) — not 1 with a traceback, which means a bug."""
    reg = vm_registrar(hosts, registrar_factory)
    vm = AgentProcess(state_dirs("vm"), reg, token=reg.create_token("vm"), netns=hosts.vm.name,
                      extra={"proxy": {"uid": 1337, "gid": 1337},
                             "sidecar": {"enabled": False},
                             "capture": {"enabled": True, "external_proxy": True,
                                         "backend": "iptables-nft", "inbound_ports": [9090]}})
    hosts.vm.ip("route", "add", "default", "via", hosts.peer.address)  # else no probe
    baseline = nat_rules(hosts.vm.name)
    code, log = run_to_exit(vm, 90)
    assert code == 69, log[-3000:]
    assert "data plane not up: capture not installed" in log, log[-2000:]
    assert "Traceback" not in log
    assert nat_rules(hosts.vm.name) == baseline
    assert (vm.credentials / "current").exists(), "the identity obtained is kept"


def test_a_first_bootstrap_envoy_cannot_use_exits_78_and_is_not_kept(
        hosts: HostPair, registrar_factory: Callable[..., RegistrarProcess], envoy_path: Path,
        tmp_path: Path) -> None:
    """A first boot validates its bootstrap beside Envoy's start, not before it; a
    rejection must still end the start with 78 and Envoy's reason. Here the state
    directory sits in a 0700 directory the proxy user cannot enter (a real
    misconfiguration), so Envoy, run as that user, cannot read its own files."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    reg = vm_registrar(hosts, registrar_factory)
    extra = dataplane(envoy_path, app_port=9090, allowed=PEER_ID, backend="iptables-nft")
    extra["capture"] = {"enabled": False}
    vm = AgentProcess(private / "vm", reg, token=reg.create_token("vm"), netns=hosts.vm.name,
                      extra=extra)
    code, log = run_to_exit(vm, 60)
    assert code == 78, log[-3000:]
    assert "cannot start the sidecar: envoy rejected the rendered bootstrap" in log, log[-3000:]
    assert " ready " not in log and "Traceback" not in log, log[-3000:]
    envoy_dir = vm.state_dir / "envoy"
    assert not (envoy_dir / "bootstrap.yaml").exists(), "a rejected first bootstrap stays"
    assert not (envoy_dir / "bootstrap.unchecked").exists()
