"""Registrar tests: a real server process over real TLS (tests/fixtures/registrar.py;
``registrar_factory`` is wired in tests/conftest.py)."""

from collections.abc import Iterator

import pytest

from tests.fixtures.registrar import Group, RegistrarProcess

GROUPS = {
    "web": Group("default", "web-vm", 3600, {"app": "web"}),
    "db": Group("data", "db-vm", 120),
}


@pytest.fixture(scope="module")
def registrar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrarProcess]:
    """One server per test module (starting one costs ~1 s); tests must leave it healthy."""
    base = tmp_path_factory.mktemp("registrar")
    reg = RegistrarProcess(base, groups=GROUPS)
    try:
        reg.start()
        yield reg
    finally:
        reg.kill()
