"""The addresses the agent reports, read from the kernel's tables, in a network
namespace with known addresses: every address of the namespace, and only
those, beside psutil's answer (getifaddrs) in the same namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = ("import json, socket, ipaddress, psutil\n"
         "from agent.identity.host import local_addresses\n"
         "theirs = sorted({str(ip) for entries in psutil.net_if_addrs().values() "
         "for e in entries if e.family in (socket.AF_INET, socket.AF_INET6) "
         "for ip in [ipaddress.ip_address(e.address.split('%')[0])] "
         "if not (ip.is_loopback or ip.is_link_local)})\n"
         "print(json.dumps({'ours': local_addresses(), 'psutil': theirs}))\n")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hostaddr{os.getpid()}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def addresses_in(ns: str) -> dict[str, list[str]]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_every_address_of_the_host_and_nothing_else(netns: str) -> None:
    run = ("netns", "exec", netns, "ip")
    ip(*run, "link", "set", "lo", "up")
    ip(*run, "link", "add", "d0", "type", "veth", "peer", "name", "d0p")
    ip(*run, "link", "set", "d0p", "up")
    ip(*run, "link", "set", "d0", "up")
    ip(*run, "addr", "add", "10.77.5.5/24", "dev", "d0")
    ip(*run, "addr", "add", "10.77.6.6/16", "dev", "d0")  # a second, other prefix
    ip(*run, "addr", "add", "fd00:77::5/64", "dev", "d0", "nodad")
    ip(*run, "link", "add", "d1", "type", "veth", "peer", "name", "d1p")
    ip(*run, "link", "set", "d1p", "up")
    ip(*run, "link", "set", "d1", "up")
    ip(*run, "addr", "add", "192.0.2.9/32", "dev", "d1")
    found = addresses_in(netns)
    # Loopback and the veths' fe80:: addresses are left out.
    assert found["ours"] == ["10.77.5.5", "10.77.6.6", "192.0.2.9", "fd00:77::5"]
    assert found["ours"] == found["psutil"]


def test_a_namespace_with_only_loopback_reports_nothing(netns: str) -> None:
    ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
    assert addresses_in(netns) == {"ours": [], "psutil": []}
