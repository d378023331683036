"""What start-up finds on disk: the live credentials and ``state.json``, with
anything damaged moved into quarantine instead of crashing the agent.

Damaged credentials leave the agent with none (it re-attests if it can); a
damaged ``state.json`` leaves it with defaults, and since every field in it is
learnt again from the registrar, the next renewal is made at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.credentials import Credentials, CredentialStore
from agent.credentials.store import StoreError
from agent.state.quarantine import Quarantine
from agent.state.store import AgentState, StateError, StateFile


@dataclass(frozen=True)
class Stored:
    creds: Credentials | None
    state: AgentState
    state_damaged: bool
    damage: str | None
    """Operator-facing account of what was quarantined, or None."""


def load_stored(store: CredentialStore, state_file: StateFile, quarantine: Quarantine) -> Stored:
    store.prepare()
    notes: list[str] = []
    state_damaged = False
    try:
        state = state_file.load()
    except StateError as exc:
        where = quarantine.move([state_file.path], str(exc))
        state, state_damaged = AgentState(), True
        notes.append(f"{state_file.path} was damaged ({exc}) and was moved to {where}")
    try:
        creds = store.current()
    except StoreError as exc:
        where = quarantine.move(list(exc.damaged), str(exc))
        creds = None
        notes.append(f"the stored credentials were damaged ({exc}) and were moved to {where}")
    return Stored(creds, state, state_damaged, "; ".join(notes) or None)
