"""PostgreSQL's schema is changed only by ``mesh-registrar migrate``: ``serve``
refuses an older schema naming the command, and nothing downgrades a newer one.
A bad ``store:`` section is a config error; an unreachable database is 69."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.exits import EX_CONFIG, EX_DATAERR, EX_UNAVAILABLE
from registrar.store.db import SCHEMA_VERSION as SQLITE_VERSION
from registrar.store.postgres import SCHEMA_VERSION
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[Callable[..., RegistrarProcess]]:
    """PostgreSQL only (the ``store`` is the test's own): not run once per store."""
    made: list[RegistrarProcess] = []

    def make(store: dict[str, Any]) -> RegistrarProcess:
        made.append(RegistrarProcess(tmp_path / f"r{len(made)}", store=store))
        made[-1].base_dir.mkdir()
        made[-1].init()
        return made[-1]

    try:
        yield make
    finally:
        for reg in made:
            reg.kill()


def test_both_stores_have_the_same_schema_versions() -> None:
    assert SCHEMA_VERSION == SQLITE_VERSION


def test_serve_refuses_an_unmigrated_database_until_migrate_runs(
        factory: Callable[..., RegistrarProcess],
        postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database(migrated=False)
    reg = factory({"type": "postgres", "dsn": dsn})
    refused = reg.cli("serve", check=False)
    assert refused.returncode == EX_DATAERR
    assert "schema 0 is older" in refused.stderr
    assert "mesh-registrar migrate --config" in refused.stderr
    assert "password" not in refused.stderr and dsn not in refused.stderr
    first = reg.cli("migrate")
    assert f"schema 0 -> {SCHEMA_VERSION}" in first.stdout
    assert "nothing to do" in reg.cli("migrate").stdout
    reg.start()
    assert reg.cli("token", "create", "--group", "default").stdout.strip()


def test_a_newer_schema_is_never_downgraded(
        factory: Callable[..., RegistrarProcess],
        postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    name = dsn.split("dbname=")[1].split()[0]
    postgres_server.sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}", name)
    reg = factory({"type": "postgres", "dsn": dsn})
    for command in (("migrate",), ("serve",), ("token", "list")):
        result = reg.cli(*command, check=False)
        assert result.returncode == EX_DATAERR, (command, result.stderr)
        assert f"schema {SCHEMA_VERSION + 1} is newer" in result.stderr
    assert postgres_server.sql("SELECT version FROM schema_version", name) == str(
        SCHEMA_VERSION + 1)


def test_store_config_errors_and_an_unreachable_database(
        factory: Callable[..., RegistrarProcess], tmp_path: object) -> None:
    reg = factory({"type": "postgres"})
    result = reg.cli("token", "list", check=False)
    assert result.returncode == EX_CONFIG and "store.dsn" in result.stderr
    reg.store = {"type": "mysql"}
    reg.write_config()
    result = reg.cli("token", "list", check=False)
    assert result.returncode == EX_CONFIG and "store.type" in result.stderr
    assert "sqlite|postgres" in result.stderr
    secret = "hunter2-not-logged"
    reg.store = {"type": "postgres", "dsn": f"host=/nonexistent dbname=x password={secret}",
                 "connect_timeout": "1s"}
    reg.write_config()
    for command in (("token", "list"), ("serve",), ("migrate",)):
        result = reg.cli(*command, check=False)
        assert result.returncode == EX_UNAVAILABLE, (command, result.stderr)
        assert "database is unreachable" in result.stderr
        assert secret not in result.stderr + result.stdout


_SCHEMA_6_ROWS = (
    "INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name, first_seen,"
    " last_seen, current_serial) VALUES ('aws:1:i-1', 'aws', 'spiffe://x/a', 'g', 1, 1, 'aa')",
    "INSERT INTO certs (serial, workload_id, spiffe_id, issued_at, not_after)"
    " VALUES ('aa', 1, 'spiffe://x/a', 10, 9e9)",
)


def _first_use_record_after_7(conn: Any) -> None:
    """Schema 7 keeps a schema-6 EC2 workload, with no first-use record: its lost
    answer is never given again (nothing says which key it certified)."""
    from meshcore.clock import SystemClock
    from registrar.store.inventory import Inventory
    assert [tuple(r) for r in conn.execute(
        "SELECT subject, current_serial, first_use_key, first_use_serial, first_use_chain"
        " FROM workloads").fetchall()] == [("aws:1:i-1", "aa", None, None, None)]
    assert Inventory(conn, SystemClock()).first_use_answered("aws", "aws:1:i-1", "k") is None


def test_a_schema_6_sqlite_inventory_migrates_to_7_keeping_its_rows(tmp_path: Path) -> None:
    import sqlite3

    from registrar.store.db import MIGRATIONS, connect
    path = tmp_path / "registrar.db"
    old = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:6]:
        old.executescript(script)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (6)")
    for statement in _SCHEMA_6_ROWS:
        old.execute(statement)
    old.close()
    conn = connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (7,)
        _first_use_record_after_7(conn)
    finally:
        conn.close()


def test_migrate_brings_a_schema_6_postgres_database_to_7_keeping_its_rows(
        factory: Callable[..., RegistrarProcess],
        postgres_server: PostgresServer) -> None:
    from registrar.store.pg_schema import MIGRATIONS
    dsn = postgres_server.new_database(migrated=False)
    name = dsn.split("dbname=")[1].split()[0]
    for script in MIGRATIONS[:6]:
        postgres_server.sql(script, name)
    postgres_server.sql("CREATE TABLE schema_version (version INTEGER NOT NULL);"
                        " INSERT INTO schema_version VALUES (6)", name)
    for statement in _SCHEMA_6_ROWS:
        postgres_server.sql(statement, name)
    reg = factory({"type": "postgres", "dsn": dsn})
    assert "schema 6 -> 7" in reg.cli("migrate").stdout
    conn = reg.db()
    try:
        _first_use_record_after_7(conn)
    finally:
        conn.close()
