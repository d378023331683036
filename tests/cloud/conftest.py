"""Cloud attestation fixtures: one test PKI per session, fakes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cloud.netns import CloudVm, make_vm
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CloudPki:
    return CloudPki.create(tmp_path_factory.mktemp("cloud-pki"))


@pytest.fixture
def fake_gce(pki: CloudPki) -> Iterator[tuple[FakeGce, str]]:
    fake = FakeGce(pki)
    with serving(fake.app()) as url:
        yield fake, url


@pytest.fixture
def pki_dir(pki: CloudPki) -> Path:
    return pki.root


@pytest.fixture
def vm() -> Iterator[CloudVm]:
    """A VM network namespace (with a metadata address), removed afterwards."""
    made = make_vm()
    try:
        yield made
    finally:
        made.close()
