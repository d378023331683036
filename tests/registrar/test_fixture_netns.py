"""The fixture's host/prefix overrides: a registrar reached across a veth pair from a
network namespace (how the agent's integration tests use it). Needs root: fails, never
skips, without it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key

pytestmark = pytest.mark.netns


@dataclass(frozen=True)
class Link:
    ns: str
    host_ip: str
    ns_ip: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    pid = os.getpid()
    ns, host_if, ns_if = f"rg{pid}", f"rgh{pid}", f"rgn{pid}"
    # 100.64.0.0/10 (shared address space): unlikely to meet anyone's real routes.
    base = f"100.{64 + pid % 64}.{(pid // 64) % 256}"
    created = False
    try:
        _ip("netns", "add", ns)
        created = True
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{base}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{base}.2/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield Link(ns=ns, host_ip=f"{base}.1", ns_ip=f"{base}.2")
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        if created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _healthz_from_ns(link: Link, reg: RegistrarProcess) -> str:
    code = ("import ssl, urllib.request, sys; ctx = ssl.create_default_context(cafile=sys.argv[2]);"
            "print(urllib.request.urlopen(sys.argv[1] + '/healthz', context=ctx).read().decode())")
    return subprocess.run(["ip", "netns", "exec", link.ns, sys.executable, "-c", code, reg.url,
                           str(reg.ca_file)], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def test_registrar_on_a_veth_address_serves_a_namespace(
        link: Link, registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(host=link.host_ip)
    assert reg.url.startswith(f"https://{link.host_ip}:")
    assert '"ok"' in _healthz_from_ns(link, reg)


def test_registrar_inside_a_namespace(
        link: Link, registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(host=link.ns_ip, prefix=["ip", "netns", "exec", link.ns])
    token = reg.create_token("default")
    with calls.client(reg) as c:
        status, body = calls.post(c, "/v1/attest", json=calls.attest_body(
            token, csr_pem(ec_key())))
    assert status == 200 and body["spiffe_id"] == "spiffe://example.org/ns/default/sa/vm"
    reg.stop()
    assert not reg.running()
