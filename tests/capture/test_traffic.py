"""Must-show 1: real packets in network namespaces, every backend, IPv4 and IPv6.

An app uid's outbound TCP lands on 15001 with SO_ORIGINAL_DST intact; inbound
to a captured port lands on 15006; the proxy uid/gid is not captured; inbound
SSH, the metadata addresses and the registrar stay direct even when the
config lists them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.exempt import url_exemptions
from agent.capture.probe import SubprocessProber
from agent.capture.runner import SubprocessRunner
from agent.proxy.config import ProxyConfig
from tests.capture.conftest import BACKENDS
from tests.capture.netns import (
    METADATA4,
    METADATA6,
    PEER4,
    PEER6,
    VM4,
    VM6,
    Topology,
    ruleset,
)

APP, PROXY = 1000, 1337
STAR = CaptureConfig(enabled=True, proxy=ProxyConfig(uid=PROXY, gid=PROXY))
# Lists SSH and the metadata addresses explicitly: they must stay direct anyway.
LISTED = CaptureConfig(
    enabled=True, proxy=ProxyConfig(uid=PROXY, gid=PROXY), inbound_ports=(22, 9080),
    exclude_inbound_ports=(),
    include_outbound_cidrs=(f"{METADATA4}/32", f"{METADATA6}/128", "10.77.0.0/24", "fd77::/64"))


@pytest.fixture(scope="module")
def net(vm_and_peer: Topology) -> Iterator[Topology]:
    topo = vm_and_peer
    assert topo.peer is not None
    topo.serve(topo.vm, "outbound:4:0.0.0.0:15001", "outbound:6:[::]:15001",
               "inbound:4:0.0.0.0:15006", "inbound:6:[::]:15006",
               "ssh:4:0.0.0.0:22", "ssh:6:[::]:22", "app:4:0.0.0.0:9080", "app:6:[::]:9080")
    topo.serve(topo.peer, "peer:4:0.0.0.0:8080", "peer:6:[::]:8080",
               "registrar:4:0.0.0.0:8443", "registrar:6:[::]:8443",
               f"metadata:4:{METADATA4}:80", f"metadata:6:[{METADATA6}]:80")
    yield topo


def tags(answers: list[str]) -> list[str]:
    """Which listener answered. (A direct connection's SO_ORIGINAL_DST is simply its own
    destination once conntrack is active, so only redirected answers compare ``orig``.)"""
    return [a.split()[0] for a in answers]


# The registrar lives on the peer, on the same addresses as a captured service.
REGISTRAR = (*url_exemptions(f"https://{PEER4}:8443", "registrar"),
             *url_exemptions(f"https://[{PEER6}]:8443", "registrar"))


def controller(topo: Topology, config: CaptureConfig, state_dir: Path) -> CaptureController:
    runner = SubprocessRunner(topo.ns(topo.vm))
    return CaptureController(config, state_dir=state_dir, runner=runner,
                             always_exempt=REGISTRAR,
                             prober=SubprocessProber(runner, sys.executable))


OUT = (f"{PEER4}:8080", f"[{PEER6}]:8080", f"{METADATA4}:80", f"[{METADATA6}]:80",
       f"{PEER4}:8443", f"[{PEER6}]:8443")
IN = (f"{VM4}:9080", f"[{VM6}]:9080", f"{VM4}:22", f"[{VM6}]:22")


@pytest.mark.netns
@pytest.mark.parametrize("config", [STAR, LISTED], ids=["star", "listed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_traffic(net: Topology, backend: str, config: CaptureConfig,
                      tmp_path: Path) -> None:
    assert net.peer is not None
    baseline = ruleset(net.vm, ignore_empty_legacy=True)
    ctl = controller(net, CaptureConfig(**{**config.__dict__, "backend": backend}), tmp_path)
    # Before capture everything is direct: the assertions below are not vacuous.
    assert tags(net.connect(net.vm, APP, APP, *OUT[:2])) == ["peer"] * 2
    record = asyncio.run(ctl.apply())
    try:
        assert record.backend == backend
        answers = net.connect(net.vm, APP, APP, *OUT)
        assert answers[:2] == [f"outbound orig={PEER4}:8080", f"outbound orig={PEER6}:8080"]
        assert tags(answers[2:4]) == ["metadata", "metadata"]
        # The registrar's address and port go direct; its other ports do not (above).
        assert tags(answers[4:]) == ["registrar", "registrar"]
        # Proxy identity by uid, and by gid alone, is never captured.
        assert tags(net.connect(net.vm, PROXY, PROXY, *OUT[:2])) == ["peer"] * 2
        assert tags(net.connect(net.vm, APP, PROXY, *OUT[:2])) == ["peer"] * 2
        answers = net.connect(net.peer, APP, APP, *IN)
        assert answers[:2] == [f"inbound orig={VM4}:9080", f"inbound orig={VM6}:9080"]
        assert tags(answers[2:]) == ["ssh", "ssh"]
    finally:
        asyncio.run(ctl.remove())
    assert tags(net.connect(net.vm, APP, APP, *OUT[:2])) == ["peer"] * 2
    assert tags(net.connect(net.peer, APP, APP, *IN[:2])) == ["app"] * 2
    # Empty legacy kernel tables cannot be deleted once created; see test_lifecycle for the
    # byte-exact baseline on a machine whose nat table already exists.
    assert ruleset(net.vm, ignore_empty_legacy=True) == baseline
