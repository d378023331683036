"""``mesh-registrar migrate --config PATH``: bring the store to this registrar's
schema. SQLite migrates itself whenever it is opened (one host, one file); this
command is what PostgreSQL needs after an upgrade, run once for all replicas
(``serve`` refuses an older schema rather than migrate under running peers)."""

from __future__ import annotations

import sys

from registrar.config import RegistrarConfig
from registrar.store.db import SCHEMA_VERSION, connect


def run_migrate(config: RegistrarConfig) -> int:
    """Raises SchemaTooNew (a newer schema is never downgraded) or StoreUnavailable."""
    if config.store.type == "sqlite":
        connect(config.database).close()
        print(f"sqlite {config.database}: schema {SCHEMA_VERSION}")
        return 0
    from registrar.store import postgres
    conn = postgres.open_postgres(config.store, check=False)
    try:
        before, after = postgres.migrate(conn)
    finally:
        conn.close()
    if before == after:
        print(f"postgres: schema {after}, nothing to do")
    else:
        print(f"postgres: schema {before} -> {after}")
    sys.stdout.flush()
    return 0
