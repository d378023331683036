"""Capture test fixtures: network namespaces that are always deleted, even on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.capture.netns import Topology, make

BACKENDS = ("iptables-nft", "iptables-legacy", "nftables")


@pytest.fixture
def vm_ns() -> Iterator[Topology]:
    topo = make(with_peer=False)
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture(scope="module")
def vm_and_peer() -> Iterator[Topology]:
    topo = make(with_peer=True)
    try:
        yield topo
    finally:
        topo.close()
