"""Shared pieces of the capture lifecycle/controller tests: configs, a Docker-like
pre-existing ruleset, and a controller wired to a namespace."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.probe import SubprocessProber
from agent.capture.runner import SubprocessRunner
from agent.proxy.config import ProxyConfig
from tests.capture.netns import Topology, sh

A = CaptureConfig(enabled=True, proxy=ProxyConfig(uid=1337, gid=1337), probe=False)
B = CaptureConfig(enabled=True, proxy=ProxyConfig(uid=2000, gid=2001), probe=False, ipv6=False,
                  inbound_ports=(8080, 9090), include_outbound_cidrs=("10.0.0.0/8",),
                  exclude_outbound_ports=(5432, 6379), exclude_interfaces=("docker0",))

DOCKER = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d {loop} -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {net} ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8443 -j DNAT --to-destination {dnat}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
"""
FIREWALL = """table inet fw {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 accept
\t}
}
"""


def with_existing_rules(ns: str, backend: str) -> None:
    """Docker's NAT/filter chains (iptables) plus a firewalld-like native nft table."""
    variant = "legacy" if backend == "iptables-legacy" else "nft"
    sh("ip", "netns", "exec", ns, f"iptables-{variant}-restore", stdin=DOCKER.format(
        loop="127.0.0.0/8", net="172.17.0.0/16", dnat="172.17.0.2:443"))
    sh("ip", "netns", "exec", ns, f"ip6tables-{variant}-restore", stdin=DOCKER.format(
        loop="::1/128", net="fd00:dead::/64", dnat="[fd00:dead::2]:443"))
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=FIREWALL)


def without_ours(text: str) -> str:
    text = re.sub(r"table inet mesh_agent \{.*?\n\}\n?", "", text, flags=re.S)
    text = re.sub(r"\tchain MESH_\w+ \{.*?\n\t\}\n", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if "MESH_" not in line and line.strip())


def controller(topo: Topology, config: CaptureConfig | None, state: Path,
               **kwargs: object) -> CaptureController:
    runner = SubprocessRunner(topo.ns(topo.vm))
    # The probe must run in the VM's namespace, like the agent runs in the VM's.
    kwargs.setdefault("prober", SubprocessProber(runner, sys.executable))
    return CaptureController(config, state_dir=state, runner=runner,
                             **kwargs)  # type: ignore[arg-type]


def cfg(config: CaptureConfig, **changes: object) -> CaptureConfig:
    return CaptureConfig(**{**config.__dict__, **changes})
