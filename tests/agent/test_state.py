"""state.json: versioned, migrated, never silently downgraded."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.state.store import SCHEMA_VERSION, AgentState, StateError, StateFile


def test_round_trip_is_0600(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "state.json")
    state = AgentState(spiffe_id="spiffe://td/ns/a/sa/b", rotations=3, mesh={"group": "g"})
    file.save(state)
    assert file.load() == state
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "state.json").read_text())["schema"] == SCHEMA_VERSION


def test_v1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"schema": 1, "spiffe_id": "spiffe://td/x",
                                "renew_at": "2026-01-01T00:00:00+00:00"}))
    state = StateFile(path).load()
    assert state.renew_after == "2026-01-01T00:00:00+00:00"
    assert state.rotations == 0


@pytest.mark.parametrize("body", ['{"schema": 99}', '{"spiffe_id": "x"}', "[1]", "{not json"])
def test_unusable_state_is_an_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(body)
    with pytest.raises(StateError):
        StateFile(path).load()


def test_missing_state_is_empty(tmp_path: Path) -> None:
    assert StateFile(tmp_path / "nope.json").load() == AgentState()
