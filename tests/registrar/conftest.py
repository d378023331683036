"""Registrar tests: a real server process over real TLS (tests/fixtures/registrar.py;
``registrar_factory`` is wired in tests/conftest.py).

Every test here that runs a registrar (``registrar``, ``registrar_factory``) or
opens its store (``store_db``) runs twice: on SQLite and on a real PostgreSQL
(tests/fixtures/postgres.py; a fresh database per registrar)."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import Group, RegistrarProcess, StoreMaker

GROUPS = {
    "web": Group("default", "web-vm", 3600, {"app": "web"}),
    "db": Group("data", "db-vm", 120),
}
STORES = ("sqlite", "postgres")


@pytest.fixture(scope="module", params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _maker(kind: str, request: pytest.FixtureRequest) -> StoreMaker | None:
    if kind == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return lambda: {"type": "postgres", "dsn": server.new_database()}


@pytest.fixture
def registrar_store(store_kind: str, request: pytest.FixtureRequest) -> StoreMaker | None:
    return _maker(store_kind, request)


@pytest.fixture(scope="module")
def module_store(store_kind: str, request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The ``store:`` section for a module's one registrar (a fresh database)."""
    maker = _maker(store_kind, request)
    return None if maker is None else maker()


@pytest.fixture(scope="module")
def registrar(tmp_path_factory: pytest.TempPathFactory,
              module_store: dict[str, Any] | None) -> Iterator[RegistrarProcess]:
    """One server per test module and store (starting one costs ~1 s); tests must
    leave it healthy."""
    base = tmp_path_factory.mktemp("registrar")
    reg = RegistrarProcess(base, groups=GROUPS, store=module_store)
    try:
        reg.start()
        yield reg
    finally:
        reg.kill()


@pytest.fixture
def store_opener(store_kind: str, request: pytest.FixtureRequest,
                 tmp_path: Any) -> Iterator[Callable[[], Any]]:
    """Opens (each call: a new connection, as another worker or replica would) one
    fresh, migrated store: a SQLite file or a PostgreSQL database."""
    from meshcore.secret import Secret
    from registrar.store.db import connect
    from registrar.store.postgres import open_postgres
    from registrar.store.settings import StoreConfig
    opened: list[Any] = []
    if store_kind == "sqlite":
        def open_one() -> Any:
            opened.append(connect(tmp_path / "registrar.db"))
            return opened[-1]
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        config = StoreConfig(type="postgres", dsn=Secret(server.new_database()))

        def open_one() -> Any:
            opened.append(open_postgres(config))
            return opened[-1]
    try:
        yield open_one
    finally:
        for conn in opened:
            conn.close()


@pytest.fixture
def store_db(store_opener: Callable[[], Any]) -> Any:
    """A fresh, migrated store opened as the registrar opens it."""
    return store_opener()
