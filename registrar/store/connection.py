"""The storage interface every store class is written against, and how to open it.

A ``Connection`` runs SQL in the portable subset both databases speak (``?``
placeholders, ``INSERT ... ON CONFLICT``, ``UPDATE ... WHERE ... RETURNING``) and
gives back rows and a rowcount. Two implementations:

* SQLite (``registrar/store/db.py``): Python's own ``sqlite3.Connection``, one
  file beside the CA, migrated automatically when opened. One host.
* PostgreSQL (``registrar/store/postgres.py``): a psycopg 3 connection pool shared
  by replicas; migrated only by ``mesh-registrar migrate``.

Every invariant is decided by one statement's rowcount (a token spent, a first use
claimed, a challenge consumed), so it holds across processes and replicas on both
without any lock held in Python.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from registrar.rejections import Rejected

if TYPE_CHECKING:
    from registrar.config import RegistrarConfig

RETRY_AFTER = 2  # seconds an agent waits when the database is unreachable


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the store classes use (sqlite3.Connection has exactly this shape)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...

    def close(self) -> None: ...


class TransactionalConnection(Connection, Protocol):
    """A connection that runs its own transactions (PostgreSQL's, through a pool)."""

    kind: str

    def transaction(self, *, immediate: bool) -> AbstractContextManager[Any]: ...


class StoreUnavailable(Rejected):
    """The database cannot be reached: the request is answered 503 with Retry-After,
    nothing was written (the transaction it was in rolled back with the connection)."""

    def __init__(self, detail: str) -> None:
        super().__init__("store_unavailable", "the registrar's database is unreachable; "
                         "retry later", retry_after=RETRY_AFTER, logged=f"store={detail}")


class SchemaTooNew(Exception):
    """The database was written by a newer registrar; refuse rather than corrupt it."""


class SchemaOutdated(Exception):
    """A PostgreSQL schema older than this registrar (never migrated implicitly)."""


class StoreError(Exception):
    """Any other PostgreSQL error, translated (a bug, or a damaged schema): a 500.
    SQLite raises ``sqlite3.Error``: catch ``STORE_ERRORS`` for either."""


class IntegrityError(StoreError):
    """A uniqueness or check constraint refused a write (PostgreSQL's, translated;
    SQLite raises ``sqlite3.IntegrityError``: catch ``INTEGRITY_ERRORS``)."""


INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, IntegrityError)
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError, StoreUnavailable)


def kind_of(conn: Connection) -> str:
    return "sqlite" if isinstance(conn, sqlite3.Connection) else str(getattr(conn, "kind", "?"))


def in_transaction(conn: Connection) -> bool:
    """Whether a unit (``transaction``) is open on ``conn`` in this thread."""
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    return bool(conn.in_unit())  # type: ignore[attr-defined]


@contextmanager
def transaction(conn: Connection, *, immediate: bool = True) -> Iterator[Connection]:
    """One atomic unit (nested: a savepoint). ``immediate`` takes the write lock up
    front (SQLite ``BEGIN IMMEDIATE``; PostgreSQL: one advisory lock all replicas
    share), for a unit that reads then writes; ``immediate=False`` is for a unit
    whose first statement is a write and whose race is decided by that statement."""
    if isinstance(conn, sqlite3.Connection):
        from registrar.store.db import sqlite_transaction
        with sqlite_transaction(conn, immediate=immediate):
            yield conn
        return
    with conn.transaction(immediate=immediate):  # type: ignore[attr-defined]
        yield conn


def open_store(config: RegistrarConfig) -> Connection:
    """The configured store, ready for the store classes. SQLite is created and
    migrated here; PostgreSQL must already be at this registrar's schema version
    (``SchemaOutdated`` names ``mesh-registrar migrate`` otherwise)."""
    if config.store.type == "postgres":
        from registrar.store.postgres import open_postgres
        return open_postgres(config.store)
    from registrar.store.db import connect
    return connect(config.database)
