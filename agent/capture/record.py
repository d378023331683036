"""``<state_dir>/capture.json``: which backend we use and exactly what we applied.

Written before every change (``phase: applying``/``removing``) and after it,
with ``meshcore.durable.write_atomic``, so a ``kill -9`` at any point leaves a
record that says what may be installed. The backend is chosen once and kept
here; a restart never re-detects it. Versioned JSON with a migration step
per old version, like the rest of the agent's state.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from meshcore.durable import write_atomic

SCHEMA = 1
FILENAME = "capture.json"
PHASES = ("applying", "applied", "removing", "removed")


class RecordError(Exception):
    """capture.json exists but cannot be used (names the file and the problem)."""


@dataclass(frozen=True)
class CaptureRecord:
    backend: str
    backend_source: str  # "detected" or "configured"
    phase: str = "removed"
    families: tuple[int, ...] = ()
    created_tables: tuple[str, ...] = ()
    applied: dict[str, tuple[str, ...]] = field(default_factory=dict)
    plan_digest: str = ""
    owner: str = ""  # who applied: "mesh-agent daemon pid 123" / "mesh-agent capture apply"
    updated_at: str = ""  # wall-clock, for operators only

    def with_phase(self, phase: str, **changes: Any) -> CaptureRecord:
        return replace(self, phase=phase, **changes)


# version N -> function turning a version-N document into version N+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate(doc: dict[str, Any]) -> dict[str, Any]:
    version = doc.get("schema")
    if not isinstance(version, int):
        raise RecordError("no integer 'schema' field")
    if version > SCHEMA:
        raise RecordError(f"schema {version} is newer than this agent understands ({SCHEMA}); "
                          "was the agent downgraded?")
    while version < SCHEMA:
        if version not in MIGRATIONS:
            raise RecordError(f"no migration from schema {version}")
        doc = MIGRATIONS[version](doc)
        version = doc["schema"]
    return doc


def encode(record: CaptureRecord) -> bytes:
    doc = {"schema": SCHEMA, **asdict(record)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def decode(raw: bytes) -> CaptureRecord:
    try:
        doc = migrate(json.loads(raw))
        return CaptureRecord(
            backend=str(doc["backend"]),
            backend_source=str(doc["backend_source"]),
            phase=_phase(doc["phase"]),
            families=tuple(int(f) for f in doc["families"]),
            created_tables=tuple(str(t) for t in doc["created_tables"]),
            applied={str(k): tuple(str(x) for x in v) for k, v in doc["applied"].items()},
            plan_digest=str(doc["plan_digest"]),
            owner=str(doc["owner"]),
            updated_at=str(doc["updated_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError,
            OverflowError) as exc:
        # RecursionError: thousands of nested brackets (found by tests/fuzz,
        # capture_record); OverflowError: Infinity where an integer belongs.
        raise RecordError(f"malformed: {type(exc).__name__}: {str(exc)[:200]}") from None


def _phase(value: object) -> str:
    if value not in PHASES:
        raise ValueError(f"phase {value!r} not in {PHASES}")
    return str(value)


class RecordStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME

    def load(self) -> CaptureRecord | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return decode(raw)
        except RecordError as exc:
            raise RecordError(f"{self.path}: {exc}") from exc

    def save(self, record: CaptureRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, encode(record), mode=0o600)
