"""Cloud attestation fixtures: one test PKI per session, fakes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
