"""Fixtures for the real-VM set: packages, a host registrar reachable from the
guest, and a booted VM per scenario module (see test_agent_lifecycle.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registrar import RegistrarProcess
from tests.packaging.build import Packages, build_packages
from tests.vm.userdata import GUEST_REGISTRAR


@pytest.fixture(scope="session")
def packages() -> Packages:
    return build_packages()


@pytest.fixture(scope="module")
def vm_workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mesh-vm-"))
    yield path
    # MESH_VM_KEEP=1 keeps serial logs, the share and the disk for a post-mortem.
    if os.environ.get("MESH_VM_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def guest_registrar(vm_workdir: Path) -> Iterator[RegistrarProcess]:
    """A registrar on host loopback whose TLS cert also names the guest's view
    of it (qemu guestfwd address)."""
    reg = RegistrarProcess(vm_workdir / "registrar",
                           groups={"web": ("shop", "web-vm", 300)},
                           server_names=["localhost", "127.0.0.1", GUEST_REGISTRAR])
    (vm_workdir / "registrar").mkdir()
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()
