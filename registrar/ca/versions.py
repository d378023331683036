"""CA versions and the rotation phase, as stored in ``STATE/ca/rotation.json``.

Every CA the registrar has signed with lives in its own directory in Istio's
plug-in layout, ``STATE/ca/vN/{ca-cert,ca-key,cert-chain,root-cert}.pem`` (plus
``root-key.pem`` for a root we generated). ``rotation.json`` names the version
that signs (``active``), the one being introduced or retired, the phase and the
bundle version. It is replaced by one rename, so a reader (every API worker
polls it) sees either the old or the new rotation, never half of one; every file
it names is durable before it is written.

Phases (``idle`` → ``prepared`` → ``activated`` → ``idle``):

* ``idle``: ``active`` signs; the bundle holds its root.
* ``prepared``: ``active`` still signs; ``next``'s root is in the bundle too.
* ``activated``: ``active`` is the new version and signs; ``previous``'s root is
  still in the bundle for the certificates it issued.

A registrar initialised before rotation existed has no ``rotation.json``: its
top-level files are version 1, copied into ``ca/v1`` by the first rotation.

Pure apart from ``load``/``save``: transitions return new values.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from meshcore.durable import write_atomic

Phase = Literal["idle", "prepared", "activated"]
PHASES: tuple[Phase, ...] = ("idle", "prepared", "activated")
FORMAT = 1


class RotationRefused(Exception):
    """A rotation step cannot run now; ``reason`` is machine-readable."""

    def __init__(self, reason: str, message: str, workloads: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.workloads = workloads


@dataclass(frozen=True)
class Version:
    """One CA: ``root`` is its root's SHA-256 fingerprint (hex), shared by the
    versions ``--intermediate-only`` makes under one root."""

    name: str
    root: str
    intermediate: str
    kind: Literal["initial", "generated", "imported", "intermediate"]
    created_at: float


@dataclass(frozen=True)
class Rotation:
    phase: Phase
    active: str
    bundle_version: int
    versions: tuple[Version, ...]
    next: str | None = None
    previous: str | None = None
    updated_at: float = 0.0
    history: tuple[str, ...] = field(default_factory=tuple)

    def version(self, name: str) -> Version:
        for v in self.versions:
            if v.name == name:
                return v
        raise KeyError(name)

    def next_name(self) -> str:
        return f"v{max(int(v.name[1:]) for v in self.versions) + 1}"

    def bundle_roots(self) -> tuple[str, ...]:
        """Root fingerprints in the bundle, the signing root first."""
        names = [self.active] + [n for n in (self.next, self.previous) if n is not None]
        out: list[str] = []
        for name in names:
            root = self.version(name).root
            if root not in out:
                out.append(root)
        return tuple(out)

    # -- transitions (pure) ----------------------------------------------------------
    def prepared(self, new: Version, now: float) -> Rotation:
        self.require("idle", "prepare")
        return replace(self, phase="prepared", next=new.name, versions=(*self.versions, new),
                       bundle_version=self.bundle_version + (
                           0 if new.root in self.bundle_roots() else 1),
                       updated_at=now, history=(*self.history, f"{_t(now)} prepare {new.name}"))

    def activated(self, now: float) -> Rotation:
        self.require("prepared", "activate")
        assert self.next is not None
        return replace(self, phase="activated", active=self.next, previous=self.active,
                       next=None, updated_at=now,
                       history=(*self.history, f"{_t(now)} activate {self.next}"))

    def retired(self, now: float) -> Rotation:
        self.require("activated", "retire")
        assert self.previous is not None
        old_root = self.version(self.previous).root
        changes = old_root != self.version(self.active).root
        return replace(self, phase="idle", previous=None, updated_at=now,
                       bundle_version=self.bundle_version + (1 if changes else 0),
                       history=(*self.history, f"{_t(now)} retire {self.previous}"))

    def intermediate_rotated(self, new: Version, now: float) -> Rotation:
        """A new intermediate under the active root: signs at once, bundle unchanged."""
        self.require("idle", "rotate --intermediate-only")
        if new.root != self.version(self.active).root:
            raise ValueError("an intermediate-only rotation keeps the root")
        return replace(self, active=new.name, versions=(*self.versions, new), updated_at=now,
                       history=(*self.history, f"{_t(now)} intermediate {new.name}"))

    def require(self, phase: Phase, step: str) -> None:
        if self.phase != phase:
            hint = {"idle": "run `ca rotate prepare` first",
                    "prepared": "run `ca rotate activate` next",
                    "activated": "run `ca rotate retire` to finish it"}[self.phase]
            raise RotationRefused("wrong_phase", f"cannot {step}: the rotation is in phase "
                                  f"{self.phase!r} (needs {phase!r}); {hint}")


def _t(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rotation_file(state_dir: Path) -> Path:
    return state_dir / "ca" / "rotation.json"


def version_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "ca" / name


def load(state_dir: Path) -> Rotation | None:
    """The stored rotation, or None for a registrar that never rotated."""
    path = rotation_file(state_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("phase") not in PHASES:
        raise ValueError(f"{path}: not a rotation file this registrar understands")
    return Rotation(
        phase=raw["phase"], active=str(raw["active"]), bundle_version=int(raw["bundle_version"]),
        versions=tuple(Version(**v) for v in raw["versions"]), next=raw.get("next"),
        previous=raw.get("previous"), updated_at=float(raw.get("updated_at", 0.0)),
        history=tuple(raw.get("history", ())))


def save(state_dir: Path, rotation: Rotation) -> None:
    body = {"format": FORMAT, **asdict(rotation)}
    write_atomic(rotation_file(state_dir), (json.dumps(body, indent=2) + "\n").encode(),
                 mode=0o644)
