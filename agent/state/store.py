"""``state.json``: versioned JSON with a migration function, never pickles.

It records what the agent learned and must remember across restarts (the
identity, the mesh settings, the attestor that worked, the registrar's renew
hint). Credentials themselves live in the credential store.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from meshcore.durable import write_atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class AgentState:
    spiffe_id: str | None = None
    attestor: str | None = None
    mesh: Mapping[str, Any] = field(default_factory=dict)
    renew_after: str | None = None  # RFC 3339, the registrar's hint for the live cert
    registrar_url: str | None = None
    rotations: int = 0
    last_success: str | None = None  # RFC 3339 wall-clock time of the last issue/renew

    def updated(self, **changes: Any) -> AgentState:
        return replace(self, **changes)


class StateError(Exception):
    """``state.json`` is damaged: not JSON, not an object, a wrong type, a newer schema."""


# The type each field must have. Nothing in state.json is needed to keep serving
# (the credentials are separate) and every field is learnt again at the next
# issuance, so any wrong type counts as damage of the whole file.
_TYPES: dict[str, tuple[type, ...]] = {
    "spiffe_id": (str, type(None)), "attestor": (str, type(None)), "mesh": (dict,),
    "renew_after": (str, type(None)), "registrar_url": (str, type(None)),
    "rotations": (int,), "last_success": (str, type(None)),
}


def _check_types(data: Mapping[str, Any]) -> None:
    for name, value in data.items():
        allowed = _TYPES[name]
        # bool is an int to Python, never a counter here.
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise StateError(f"state.json: {name} is a {type(value).__name__}, not {names}")
    if data.get("rotations", 0) < 0:
        raise StateError("state.json: rotations is negative")
    for name in ("renew_after", "last_success"):
        if isinstance(data.get(name), str):
            try:
                dt.datetime.fromisoformat(data[name])
            except ValueError:
                raise StateError(f"state.json: {name} is not an RFC 3339 time") from None


def migrate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Bring any older ``state.json`` up to ``SCHEMA_VERSION``."""
    data = dict(raw)
    version = data.pop("schema", None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise StateError("state.json has no schema version")
    if version > SCHEMA_VERSION:
        raise StateError(f"state.json schema {version} is newer than this agent ({SCHEMA_VERSION})"
                         "; refusing to downgrade it")
    if version == 1:
        # v1 called the registrar hint "renew_at" and had no rotation counter.
        data["renew_after"] = data.pop("renew_at", None)
        data.setdefault("rotations", 0)
        version = 2
    known = set(AgentState.__dataclass_fields__)
    kept = {k: v for k, v in data.items() if k in known}
    _check_types(kept)
    return kept


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError, RecursionError) as exc:
            # ValueError covers bad JSON and bad UTF-8; RecursionError, 100k nested [.
            raise StateError(f"{self.path}: unreadable ({str(exc)[:200]})") from None
        if not isinstance(raw, dict):
            raise StateError(f"{self.path}: not a JSON object")
        try:
            return AgentState(**migrate(raw))
        except StateError as exc:
            raise StateError(f"{self.path}: {exc}") from None

    def save(self, state: AgentState) -> None:
        body = {"schema": SCHEMA_VERSION, **asdict(state)}
        write_atomic(self.path, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(),
                     mode=0o600)
