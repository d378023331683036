"""Benchmarks measure our processes as installed, not as a checkout runs them.

The packages compile the bytecode of every module at install (the postinst runs
``compileall``), so an installed agent or registrar loads it and never compiles
its own source. A checkout has none until something writes it, and with
``PYTHONDONTWRITEBYTECODE=1`` (set in many test environments) nothing ever does:
every start then compiles each of our modules again, which costs start-up CPU
and leaves the compiler's garbage in the heap (the agent's idle RSS was 0.5 MiB
higher that way on the bench machine).
"""

from __future__ import annotations

import compileall
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "meshcore", "registrar")


def compile_bytecode() -> None:
    """Write the bytecode of our packages, as the postinst does (stale files only)."""
    for package in PACKAGES:
        if not compileall.compile_dir(REPO / package, quiet=1):
            raise SystemExit(f"could not compile {package}: see the error above")
