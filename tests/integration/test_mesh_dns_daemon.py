"""The DNS proxy dying inside a real ``mesh-agent run`` (harness: xds_mesh.py).

The proxy runs in the agent's process, so it dies in two ways, and each has
its promise (docs/discovery.md, "When the DNS proxy dies"):

- its listener dies while the agent lives (here the TCP listening socket is
  destroyed under it with ``ss -K``, as an operator or a firewall tool can):
  the guard notices, reports ``dns`` not ready, restarts the proxy, and the
  app's TCP and UDP queries for mesh names are answered again; the agent never
  spins on the dead socket (asyncio's own server logged a traceback per loop
  pass, in a busy loop);
- the whole agent dies (``kill -9``): the crashed run's redirect stays until
  the agent is started again (systemd's restart), then the new run removes it
  and installs its own once, and both mesh and other names resolve.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.capture.netns import ruleset
from tests.fixtures.agent import AgentProcess
from tests.integration.xds_mesh import (
    HUB_IP,
    VIP,
    Hub,
    Vm,
    agent_config,
    app_shell,
    envoy_path,
    getent,
    make_registrar,
    root,
    start_control_plane,
    state_dirs,
    wait_for,
)
from tests.sidecar.netns import sh

__all__ = ["envoy_path", "root", "state_dirs"]
pytestmark = pytest.mark.netns
OTHER = ("example.org", "192.0.2.80")  # known to the hub's test resolver only
REDIRECT = "redirect to :15053"


def tcp_lookup(vm: Vm, resolv: Path, name: str) -> str:
    """A TCP query from the app's uid to the VM's nameserver (captured to the proxy)."""
    code = ("import dns.message, dns.query; "
            f"a = dns.query.tcp(dns.message.make_query({name!r}, 'A'), {HUB_IP!r}, "
            "timeout=3); print(a.answer[0][0].to_text() if a.answer else a.rcode())")
    out = subprocess.run(app_shell(vm, resolv, f"{sys.executable} -c {shlex.quote(code)}"),
                         capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() if out.returncode == 0 else f"failed: {out.stderr[-300:]}"


def dns_status(agent: AgentProcess) -> dict[str, object]:
    return dict(agent.status().get("dns") or {})


def test_dns_proxy_killed_in_the_daemon_is_restarted_and_a_killed_agent_recovers(
        root: None, envoy_path: Path, state_dirs: Callable[[str], Path]) -> None:
    hub = Hub()
    base = state_dirs("registrar")
    reg = make_registrar(hub, base)
    resolv = base / "resolv.conf"
    resolv.write_text(f"nameserver {HUB_IP}\noptions timeout:1 attempts:2\n")
    resolv.chmod(0o644)
    resolver = agent = None
    try:
        resolver = start_control_plane(hub, reg)
        vm = hub.add("frontend", 1)
        agent = AgentProcess(state_dirs("frontend"), reg, token=reg.create_token("frontend"),
                             netns=vm.ns, extra=agent_config(envoy_path, resolv, []))
        agent.start()
        agent.wait_ready(90)
        wait_for(lambda: getent(vm, resolv, "orders.shop.mesh") == VIP, 30, "the mesh name")
        assert tcp_lookup(vm, resolv, "orders.shop.mesh") == VIP
        redirects = ruleset(vm.ns).count(REDIRECT)
        assert redirects > 0, ruleset(vm.ns)

        # 1. The proxy's TCP listener is destroyed under the running agent.
        killed = sh("ip", "netns", "exec", vm.ns, "ss", "-K", "-t", "-l", "sport", "=",
                    ":15053").stdout
        assert "15053" in killed, killed  # ss lists what it destroyed
        wait_for(lambda: int(str(dns_status(agent).get("restarts", 0))) >= 1, 30,
                 "the guard restarting the proxy")
        wait_for(lambda: tcp_lookup(vm, resolv, "orders.shop.mesh") == VIP, 30,
                 "TCP answers from the restarted proxy")
        wait_for(lambda: dns_status(agent).get("redirecting") is True, 30, "the redirect back")
        assert getent(vm, resolv, "orders.shop.mesh") == VIP
        assert getent(vm, resolv, OTHER[0]) == OTHER[1]
        status = agent.status()
        assert status["conditions"]["dns"] is True and status["ready"] is True, status
        log = agent.log_text()
        assert "the TCP listener failed" in log and "restarting the proxy" in log, log[-3000:]
        assert "_accept_connection" not in log, log[-3000:]  # no busy loop on a dead socket
        assert ruleset(vm.ns).count(REDIRECT) == redirects

        # 2. The agent is killed, and its proxy with it: the crashed run's redirect
        # stays (nothing is left to answer) until the agent starts again.
        agent.kill()
        assert ruleset(vm.ns).count(REDIRECT) == redirects
        assert getent(vm, resolv, OTHER[0]) is None
        agent.start()
        agent.wait_ready(90)
        wait_for(lambda: getent(vm, resolv, OTHER[0]) == OTHER[1], 30, "other names again")
        wait_for(lambda: getent(vm, resolv, "orders.shop.mesh") == VIP, 30, "mesh names again")
        assert ruleset(vm.ns).count(REDIRECT) == redirects  # removed, then installed once
    finally:
        if agent is not None:
            print(f"--- agent log (tail)\n{agent.log_text()[-4000:]}")
            agent.kill()
        if resolver is not None:
            resolver.kill()
            resolver.wait()
        reg.kill()
        hub.destroy()
