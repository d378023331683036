"""Target ``agent_state``: what the agent finds in its state directory at start
(``agent.identity.stored.load_stored``): state.json, the ``current`` link and
the generation it names (key.pem, cert-chain.pem, bundle.pem).

The input is a list of parts, each ``==> NAME`` on a line of its own followed
by the content; NAME is one of ``PARTS`` (``current`` holds the link's
target). A part that is absent is a file that does not exist. Allowed
outcomes are the documented ones (docs/agent.md, damaged state): usable
credentials, none, or damage quarantined under ``STATE/quarantine/`` with a
``REASON`` and the account of it in ``Stored.damage``. Any exception is a crash:
the agent would end with exit 1 instead of re-attesting or exiting 79. Usable
credentials must also give what start-up reads of them (SPIFFE ID, validity,
serial) without an exception.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
from pathlib import Path

from agent.credentials import CredentialStore
from agent.identity.stored import load_stored
from agent.state.quarantine import Quarantine
from agent.state.store import AgentState, StateFile
from tests.fakes.clock import FakeClock
from tests.fuzz.mutate import ByteMutator, json_bytes, pem_bytes

PARTS = ("state.json", "current", "key.pem", "cert-chain.pem", "bundle.pem")
GENERATION = "g00000001"


def split(data: bytes) -> dict[str, bytes]:
    """``==> NAME`` sections -> {NAME: content}; unknown names and text before
    the first header are ignored (a mutated header is simply a missing file)."""
    parts: dict[str, bytes] = {}
    for chunk in (b"\n" + data).split(b"\n==> ")[1:]:
        name, _, content = chunk.partition(b"\n")
        key = name.decode("utf-8", "replace").strip()
        if key in PARTS:
            parts[key] = content
    return parts


def join(parts: dict[str, bytes]) -> bytes:
    """The inverse of ``split``, for writing seeds."""
    return b"".join(b"==> " + name.encode() + b"\n" + content + b"\n"
                    for name, content in parts.items())


def mutate(data: bytes, rng: random.Random, byte_mutator: ByteMutator) -> bytes:
    """Change one part by its kind (JSON, PEM, the link's bytes), or drop one."""
    parts = split(data)
    if not parts:
        return byte_mutator(data, max(len(data) * 2, 64))
    name = rng.choice(sorted(parts))
    if rng.random() < 0.1:
        del parts[name]
    elif name == "state.json":
        parts[name] = json_bytes(parts[name], rng, byte_mutator)
    elif name == "current":
        parts[name] = byte_mutator(parts[name], 64)
    else:
        parts[name] = pem_bytes(parts[name], rng, byte_mutator)
    return join(parts)


@functools.cache
def _dir() -> Path:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="fuzz-agent-state-", dir=base))


def _lay_out(state: Path, parts: dict[str, bytes]) -> None:
    shutil.rmtree(state, ignore_errors=True)
    creds = state / "credentials"
    (creds / GENERATION).mkdir(parents=True, mode=0o700)
    if "state.json" in parts:
        (state / "state.json").write_bytes(parts["state.json"])
    if "current" in parts:
        target = parts["current"].rstrip(b"\n").replace(b"\0", b"")[:200] or b"?"
        os.symlink(target, creds / "current")
    for name in ("key.pem", "cert-chain.pem", "bundle.pem"):
        if name in parts:
            (creds / GENERATION / name).write_bytes(parts[name])


def check(data: bytes) -> None:
    state = _dir() / "state"
    parts = split(data)
    _lay_out(state, parts)
    quarantine = Quarantine(state, FakeClock())
    stored = load_stored(CredentialStore(state / "credentials"),
                         StateFile(state / "state.json"), quarantine)
    moved = sorted(quarantine.root.iterdir()) if quarantine.root.exists() else []
    if stored.damage is None:
        assert not moved, moved
        assert not stored.state_damaged
    else:
        # Each damage found is one quarantine directory with its REASON.
        assert moved and all((d / "REASON").is_file() for d in moved), moved
    if stored.state_damaged:
        assert stored.state == AgentState()
        assert not (state / "state.json").exists()
    if stored.creds is not None:
        creds = stored.creds
        assert creds.generation == GENERATION
        assert creds.chain and creds.bundle
        # What start-up reads of the credentials it got (IdentityManager.start, status).
        _ = (creds.spiffe_id, creds.not_before, creds.not_after, creds.serial_hex)
