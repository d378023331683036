"""The PostgreSQL store: a psycopg 3 connection pool behind the ``Connection`` shape
the store classes use (registrar/store/connection.py).

Statements run synchronously, as with SQLite: each is one round trip on a Unix
socket or LAN, no request holds a transaction across an ``await``
(registrar/api/service.py), so a worker needs few connections. Outside a
transaction each statement borrows a connection and returns it; a transaction
keeps one for its length (per thread). SQL is written with SQLite's ``?``
placeholders and rewritten to psycopg's ``%s`` here, once per statement text.

A lost server never becomes a 500: every psycopg ``OperationalError`` (refused,
reset, admin shutdown, pool timeout) is raised as ``StoreUnavailable`` (503 with
Retry-After); the transaction it interrupted died with its connection, so no
half-written row remains. For ``fail_fast`` seconds after such a failure further
statements fail at once instead of each waiting out the connect timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from registrar.store.connection import (
    IntegrityError,
    SchemaOutdated,
    SchemaTooNew,
    StoreError,
    StoreUnavailable,
)
from registrar.store.pg_schema import MIGRATIONS
from registrar.store.settings import StoreConfig

SCHEMA_VERSION = len(MIGRATIONS)
WRITE_LOCK = 0x6D657368  # advisory lock of "immediate" transactions ('mesh')
MIGRATE_LOCK = WRITE_LOCK + 1
FAIL_FAST = 1.0


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled).
    Our statements never carry a ``?`` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


class Rows:
    """A statement's result, read to the end before its connection went back to
    the pool (sqlite3.Cursor's shape: fetchone, fetchall, iteration, rowcount)."""

    __slots__ = ("_next", "_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0]


def _run(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any] | None) -> Rows:
    cur = conn.execute(_pg_sql(sql), params or None)
    # The result's status, not ``cur.description``: that builds a Column object per
    # column on every call (16 per bootstrap, ~10 % of psycopg's CPU in a profile).
    result = cur.pgresult
    returned = result is not None and result.status == pq.ExecStatus.TUPLES_OK
    return Rows(cur.fetchall() if returned else [], cur.rowcount)


class PgConnection:
    kind = "postgres"

    def __init__(self, pool: ConnectionPool[Any], *, fail_fast: float = FAIL_FAST) -> None:
        self._pool = pool
        self._local = threading.local()
        self._fail_fast = fail_fast
        self._failed_at = -1e9

    # -- the Connection shape ------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "conn", None) is not None

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Rows:
        pinned = getattr(self._local, "conn", None)
        with self._translated():
            if pinned is not None:
                return _run(pinned, sql, parameters)
            with self._pool.connection() as conn:
                return _run(conn, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Rows:
        with self.transaction(immediate=False):
            pinned = self._local.conn
            with self._translated(), pinned.cursor() as cur:
                cur.executemany(_pg_sql(sql), list(parameters))
                return Rows([], cur.rowcount)

    def close(self) -> None:
        self._pool.close()

    def in_unit(self) -> bool:
        """A transaction is open on this thread's pinned connection."""
        return getattr(self._local, "conn", None) is not None

    @contextmanager
    def transaction(self, *, immediate: bool) -> Iterator[PgConnection]:
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:  # nested: a savepoint, as in SQLite
            with self._translated(), pinned.transaction():
                yield self
            return
        with self._translated(), self._pool.connection() as conn:
            self._local.conn = conn
            try:
                conn.execute("BEGIN")
                if immediate:  # SQLite's single writer, across every replica
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                yield self
                conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status in (pq.TransactionStatus.INTRANS,
                                                    pq.TransactionStatus.INERROR):
                    # a broken connection: the server rolled back already
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                self._local.conn = None

    # -- failures --------------------------------------------------------------------
    @contextmanager
    def _translated(self) -> Iterator[None]:
        if time.monotonic() - self._failed_at < self._fail_fast:
            raise StoreUnavailable("postgres_down")
        try:
            yield
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityError(_first_line(exc)) from None  # one traceback in the log
        except psycopg.OperationalError as exc:
            self._failed_at = time.monotonic()
            raise StoreUnavailable(type(exc).__name__) from exc
        except psycopg.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {_first_line(exc)}") from None

    def ping(self) -> bool:
        """One round trip (``/ready``): False while the database cannot answer."""
        try:
            self.execute("SELECT 1")
        except StoreUnavailable:
            return False
        return True


def _pool(config: StoreConfig, *, min_size: int = 1) -> ConnectionPool[Any]:
    assert config.dsn is not None
    return ConnectionPool(
        config.dsn.reveal(), min_size=min_size, max_size=max(min_size, config.pool_size),
        kwargs={"autocommit": True, "connect_timeout": max(1, round(config.connect_timeout)),
                "application_name": "mesh-registrar"},
        timeout=config.connect_timeout, reconnect_timeout=0, open=True,
        name="mesh-registrar")


def schema_version(conn: PgConnection) -> int:
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def check_schema(conn: PgConnection) -> int:
    """The stored version, if it is exactly this registrar's; else refuse."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(f"PostgreSQL schema {current} is newer than this registrar's "
                           f"{SCHEMA_VERSION}; upgrade mesh-registrar (it never downgrades)")
    if current < SCHEMA_VERSION:
        raise SchemaOutdated(f"PostgreSQL schema {current} is older than this registrar's "
                             f"{SCHEMA_VERSION}; run `mesh-registrar migrate --config PATH` "
                             "once (replicas keep refusing to start until then)")
    return current


def migrate(conn: PgConnection) -> tuple[int, int]:
    """Bring the schema to this registrar's version; returns (before, after). Each
    step is one transaction (PostgreSQL DDL is transactional) under an advisory
    lock, so two ``migrate`` runs never interleave and a failed step leaves the
    previous version intact."""
    with conn.transaction(immediate=False):
        conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        before = schema_version(conn)
        if before > SCHEMA_VERSION:
            raise SchemaTooNew(f"PostgreSQL schema {before} is newer than this registrar's "
                               f"{SCHEMA_VERSION}; refusing to downgrade it")
        for number, script in enumerate(MIGRATIONS[before:], start=before + 1):
            with conn.transaction(immediate=False):
                pinned = conn._local.conn
                pinned.execute(script.encode())  # a whole script: no placeholders
                if number == 1:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                else:
                    conn.execute("UPDATE schema_version SET version = ?", (number,))
    return before, SCHEMA_VERSION


def open_postgres(config: StoreConfig, *, check: bool = True) -> PgConnection:
    conn = PgConnection(_pool(config))
    if check:
        try:
            check_schema(conn)
        except BaseException:
            conn.close()
            raise
    return conn
