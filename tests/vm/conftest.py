"""Fixtures for the real-VM set: the packages (built once per session) and a
scratch directory per scenario module (see test_agent_lifecycle.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.build import Packages, build_packages


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
