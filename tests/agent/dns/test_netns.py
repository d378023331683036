"""The real DNS proxy behind real capture rules in a VM namespace, and the
fail-safe: when the proxy stops answering, non-mesh names keep resolving.

The VM's /etc/resolv.conf is replaced only inside a private mount namespace
(``unshare -m`` + a bind mount) so the host's file is never touched. The
"nameserver" is ``resolver.py`` (dnspython) on 10.78.0.53 in the VM. The app
is uid 1000 (``setpriv``); the forwarder (the agent) is root here, exempt.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capture.conftest import BACKENDS
from tests.capture.netns import Topology, make, ruleset, sh

HERE = Path(__file__).parent
NAMESERVER = "10.78.0.53"
APP = ("setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups")


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    topo = make(with_peer=False)
    try:
        sh(*topo.ns(topo.vm), "ip", "addr", "add", f"{NAMESERVER}/32", "dev", "d0")
        resolv = tmp_path / "resolv.conf"
        resolv.write_text(f"nameserver {NAMESERVER}\noptions timeout:1 attempts:1\n")
        resolv.chmod(0o644)
        proc = subprocess.Popen([*topo.ns(topo.vm), sys.executable, str(HERE / "resolver.py"),
                                 NAMESERVER], stdout=subprocess.PIPE, text=True)
        topo.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield topo, resolv
    finally:
        topo.close()


def getent(topo: Topology, resolv: Path, name: str, *, app: bool = True) -> str | None:
    """``getent hosts NAME`` in the VM with our resolv.conf; the address, or None."""
    who = " ".join(APP) + " " if app else ""
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {who}getent hosts {name}"
    result = subprocess.run([*topo.ns(topo.vm), "unshare", "-m", "sh", "-c", script],
                            capture_output=True, text=True, timeout=20, check=False)
    return result.stdout.split()[0] if result.returncode == 0 and result.stdout else None


def tcp_query(topo: Topology, name: str) -> str:
    """A TCP DNS query from the app's uid straight to the nameserver address."""
    code = ("import dns.message, dns.query, sys; "
            f"a = dns.query.tcp(dns.message.make_query({name!r}, 'A'), {NAMESERVER!r}, "
            "timeout=3); print(a.answer[0][0].to_text() if a.answer else dns.rcode.to_text("
            "a.rcode()))")
    return sh(*topo.ns(topo.vm), *APP, sys.executable, "-c", code).strip()


def wait_for(predicate: object, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dns_capture_and_fail_safe(vm: tuple[Topology, Path], tmp_path: Path,
                                   backend: str) -> None:
    topo, resolv = vm
    agent = subprocess.Popen(
        [*topo.ns(topo.vm), sys.executable, str(HERE / "agent_dns.py"), str(tmp_path / "state"),
         backend, NAMESERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    topo.procs.append(agent)
    assert agent.stdin is not None and agent.stdout is not None
    assert agent.stdout.readline().strip() == "ready"
    assert "15053" in ruleset(topo.vm)

    # Through the proxy: the mesh name answers its VIP (UDP via getent, and TCP).
    assert getent(topo, resolv, "orders.shop.mesh") == "240.240.0.1"
    assert tcp_query(topo, "orders.shop.mesh") == "240.240.0.1"
    # Everything else is forwarded to the resolv.conf nameserver.
    assert getent(topo, resolv, "example.org") == "192.0.2.80"
    # The forwarder's user (root here) is exempt: it reaches the real nameserver.
    assert getent(topo, resolv, "orders.shop.mesh", app=False) is None

    # The proxy dies: the guard removes the redirect; non-mesh names keep resolving.
    agent.stdin.write("stop\n")
    agent.stdin.flush()
    assert agent.stdout.readline().strip() == "stopped"
    took = wait_for(lambda: getent(topo, resolv, "example.org") == "192.0.2.80", 10)
    rules = ruleset(topo.vm)
    assert "15053" not in rules and "MESH_OUTPUT" in rules  # the rest of capture stays
    assert getent(topo, resolv, "orders.shop.mesh") is None  # only the mesh knew it
    print(f"resolution back {took:.2f}s after the proxy stopped")
    agent.stdin.write("done\n")
    agent.stdin.flush()
    assert agent.wait(timeout=20) == 0
    assert "MESH_" not in ruleset(topo.vm)
