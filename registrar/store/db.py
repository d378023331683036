"""The SQLite store: opening the inventory file and migrating its schema.

WAL lets several server workers and the CLI use one file at once; writers are
serialised by SQLite itself (``busy_timeout``), and every statement that must be
atomic is a single ``UPDATE ... WHERE`` whose rowcount decides the race.

Calls are synchronous on purpose: each is well under a millisecond (WAL with
``synchronous=NORMAL`` does not fsync on commit), cheaper than a thread hop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registrar.store.connection import SchemaTooNew

MIGRATIONS: tuple[str, ...] = (
    # 1: tokens, workloads, issued certificates, challenges
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        group_name TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL,
        revoked_at REAL
    );
    CREATE TABLE workloads (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        subject TEXT NOT NULL,
        evidence_type TEXT NOT NULL,
        spiffe_id TEXT NOT NULL,
        group_name TEXT NOT NULL,
        hostname TEXT NOT NULL DEFAULT '',
        addresses TEXT NOT NULL DEFAULT '[]',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'active'
            CHECK (state IN ('active', 'evicted', 'revoked')),
        UNIQUE (evidence_type, subject)
    );
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY,
        workload_id INTEGER NOT NULL REFERENCES workloads(id),
        spiffe_id TEXT NOT NULL,
        issued_at REAL NOT NULL,
        not_after REAL NOT NULL
    );
    CREATE INDEX certs_workload ON certs(workload_id);
    CREATE TABLE challenges (
        nonce TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX challenges_expiry ON challenges(expires_at);
    """,
    # 2: only a workload's current certificate (or, during a handover, the one just
    # issued for it) may renew. Existing workloads start from their newest certificate.
    """
    ALTER TABLE workloads ADD COLUMN current_serial TEXT;
    ALTER TABLE workloads ADD COLUMN pending_serial TEXT;
    UPDATE workloads SET current_serial = (
        SELECT c.serial FROM certs c WHERE c.workload_id = workloads.id
        ORDER BY c.issued_at DESC, c.rowid DESC LIMIT 1);
    """,
    # 3: the mesh catalog (registrar/catalog): services, workload status reports,
    # and a change counter the xDS server polls (bumped by triggers, so every
    # writer, CLI or API worker, signals a change without knowing about xDS).
    """
    CREATE TABLE mesh_services (
        name TEXT PRIMARY KEY,
        hosts TEXT NOT NULL,
        ports TEXT NOT NULL,
        selector TEXT NOT NULL,
        vip TEXT NOT NULL UNIQUE,
        allowed TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE mesh_workload_status (
        workload_id INTEGER PRIMARY KEY REFERENCES workloads(id),
        addresses TEXT NOT NULL DEFAULT '[]',
        health TEXT NOT NULL CHECK (health IN ('healthy', 'unhealthy', 'draining')),
        evidence_addresses TEXT NOT NULL DEFAULT '[]',
        reported_at REAL NOT NULL
    );
    CREATE TABLE mesh_changes (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        counter INTEGER NOT NULL
    );
    INSERT INTO mesh_changes (id, counter) VALUES (1, 0);
    CREATE TRIGGER mesh_services_ins AFTER INSERT ON mesh_services
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TRIGGER mesh_services_upd AFTER UPDATE ON mesh_services
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TRIGGER mesh_services_del AFTER DELETE ON mesh_services
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TRIGGER mesh_status_ins AFTER INSERT ON mesh_workload_status
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TRIGGER mesh_status_upd AFTER UPDATE OF addresses, health ON mesh_workload_status
        WHEN OLD.addresses IS NOT NEW.addresses OR OLD.health IS NOT NEW.health
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TABLE mesh_xds_streams (
        stream_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        peer TEXT NOT NULL,
        connected_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        acked TEXT NOT NULL DEFAULT '{}',
        nacks INTEGER NOT NULL DEFAULT 0,
        last_nack TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE mesh_xds_counters (
        name TEXT NOT NULL,
        type_url TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name, type_url)
    );
    CREATE TRIGGER mesh_workloads_ins AFTER INSERT ON workloads
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    CREATE TRIGGER mesh_workloads_upd AFTER UPDATE OF state, group_name, spiffe_id ON workloads
        WHEN OLD.state IS NOT NEW.state OR OLD.group_name IS NOT NEW.group_name
            OR OLD.spiffe_id IS NOT NEW.spiffe_id
        BEGIN UPDATE mesh_changes SET counter = counter + 1; END;
    """,
    # 4: CA rotation (registrar/ca/versions.py). Each certificate records the CA
    # version that issued it ('' = before versions were recorded: the initial CA),
    # so `ca rotate retire` knows who still needs the old root; each workload
    # records the bundle version it was last handed, so `activate` knows who has
    # the new root.
    """
    ALTER TABLE certs ADD COLUMN ca_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE workloads ADD COLUMN bundle_version INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: cloud evidence already accepted (GCE tokens: Google advises accepting each
    # once), in the database so every worker and replica shares it; the xDS server
    # (replica) that owns each stream row, so one replica's start clears only its own.
    """
    CREATE TABLE evidence_seen (
        digest TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX evidence_seen_expiry ON evidence_seen(expires_at);
    ALTER TABLE mesh_xds_streams ADD COLUMN replica TEXT NOT NULL DEFAULT '';
    """,
    # 6: what a join token's spend paid for: the SHA-256 of the key's SubjectPublicKeyInfo
    # and the certificate (serial, chain) issued for it, so a retry whose answer was lost
    # (same token, same key) is answered again with that certificate (tokens.py).
    # Tokens spent before this version have none and are never answered again.
    """
    ALTER TABLE tokens ADD COLUMN spent_key TEXT;
    ALTER TABLE tokens ADD COLUMN spent_serial TEXT;
    ALTER TABLE tokens ADD COLUMN spent_chain TEXT;
    """,
    # 7: what an EC2 first use (trust on first use, registrar/attestation/aws.py) paid
    # for, recorded by its claim: the key's SPKI SHA-256 and the certificate (serial,
    # chain), so a retry whose answer was lost (same document, same key) is answered
    # again with that certificate (Inventory.first_use_answered). A claim replaces
    # them; workloads attested before this version have none and are never answered.
    """
    ALTER TABLE workloads ADD COLUMN first_use_key TEXT;
    ALTER TABLE workloads ADD COLUMN first_use_serial TEXT;
    ALTER TABLE workloads ADD COLUMN first_use_chain TEXT;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


@contextmanager
def sqlite_transaction(conn: sqlite3.Connection, *,
                       immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """One atomic unit. ``BEGIN IMMEDIATE`` takes the write lock up front so
    read-then-write cannot deadlock; ``immediate=False`` (``BEGIN``) is for a unit
    whose first statement is a write, so that while it has not written it holds no
    lock another connection could wait on. Inside an open transaction this is a
    savepoint: the inner unit rolls back alone, the outer one decides the commit."""
    if conn.in_transaction:
        conn.execute("SAVEPOINT unit")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # some errors (SQLITE_FULL) have rolled back already
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
            raise
        conn.execute("RELEASE unit")
        return
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


transaction = sqlite_transaction  # the SQLite half of registrar.store.connection.transaction


def _statements(script: str) -> Iterator[str]:
    """Split on ';' but keep a trigger's ``BEGIN ...; END`` body whole."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer
            buffer = ""


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the stored version; returns the version."""
    with sqlite_transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = 0 if row is None else int(row[0])
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(f"database schema {current} is newer than this registrar's "
                               f"{SCHEMA_VERSION}; upgrade mesh-registrar")
        for script in MIGRATIONS[current:]:
            for statement in _statements(script):
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating, 0600) and migrate the inventory at ``path``."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn
