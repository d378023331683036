"""The ``store:`` section of registrar.yaml: which database holds the inventory.

``type: sqlite`` (the default) is one file beside the CA (``database:``), for a
registrar on one host. ``type: postgres`` is a PostgreSQL database that several
``mesh-registrar serve`` replicas share; ``dsn`` is a libpq connection string or
URI (it may carry a password, so it is held as a ``Secret`` and never logged).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.config.reader import Section
from meshcore.secret import Secret

STORE_TYPES = ("sqlite", "postgres")


@dataclass(frozen=True)
class StoreConfig:
    type: str = "sqlite"
    dsn: Secret | None = None
    pool_size: int = 4
    connect_timeout: float = 3.0


def read_store(root: Section) -> StoreConfig:
    if not root.has("store"):
        return StoreConfig()
    s = root.section("store")
    kind = s.text("type", "sqlite", choices=STORE_TYPES)
    dsn: Secret | None = None
    if kind == "postgres":
        if not s.has("dsn"):
            raise s.error("dsn", "is required with type: postgres",
                          "a libpq connection string, e.g. 'host=/run/postgresql "
                          "dbname=registrar' or postgresql://user@host/registrar")
        dsn = Secret(s.text("dsn"))
        if not dsn.reveal().strip():
            raise s.error("dsn", "is empty", "a libpq connection string")
    elif s.has("dsn"):
        raise s.error("dsn", "is only used with type: postgres", "no dsn for sqlite")
    config = StoreConfig(
        type=kind, dsn=dsn,
        pool_size=s.integer("pool_size", 4, minimum=1, maximum=100),
        connect_timeout=s.duration("connect_timeout", 3.0, minimum=0.5, maximum=60.0))
    s.finish()
    return config
