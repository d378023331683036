"""Builds the packages once per test session with scripts/package (the same
command CI and release use), into a temporary directory."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Packages:
    agent_deb: Path
    registrar_deb: Path
    agent_rpm: Path
    registrar_rpm: Path


@functools.cache
def build_packages() -> Packages:
    out = Path(tempfile.mkdtemp(prefix="mesh-packages-"))
    proc = subprocess.run([str(REPO / "scripts" / "package"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"scripts/package failed:\n{proc.stdout}\n{proc.stderr}"

    def one(pattern: str) -> Path:
        found = sorted(out.glob(pattern))
        assert len(found) == 1, f"expected one {pattern} in {out}, got {found}"
        return found[0]

    return Packages(agent_deb=one("mesh-agent_*.deb"), registrar_deb=one("mesh-registrar_*.deb"),
                    agent_rpm=one("mesh-agent-*.rpm"), registrar_rpm=one("mesh-registrar-*.rpm"))
