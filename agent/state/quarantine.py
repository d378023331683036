"""Damaged credentials or state are moved aside, never deleted and never used.

``STATE/quarantine/<UTC time>/`` keeps what was found (mode 0700: it may hold a
private key) with a ``REASON`` file, so an operator can see what went wrong
and nothing the agent wrote is lost. The agent then starts as if the moved
files had never existed: it re-attests if it has evidence, else it stops
with ``EX_NO_IDENTITY`` naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from meshcore.clock import Clock
from meshcore.durable import write_atomic

log = logging.getLogger(__name__)


class Quarantine:
    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self.root = state_dir / "quarantine"
        self._state_dir = state_dir
        self._clock = clock

    def move(self, paths: Sequence[Path], why: str) -> Path:
        """Move each existing path (a symlink itself, not its target) into a new
        quarantine directory; returns that directory."""
        stamp = self._clock.now().strftime("%Y%m%dT%H%M%S.%fZ")
        dest = self.root / stamp
        n = 0
        while dest.exists():  # two damages in the same microsecond (a stepped clock)
            n += 1
            dest = self.root / f"{stamp}-{n}"
        dest.mkdir(mode=0o700, parents=True)
        os.chmod(self.root, 0o700)
        moved = []
        for path in paths:
            if not os.path.lexists(path):
                continue
            # The relative name keeps credentials/g00000003 apart from state.json.
            name = str(path.relative_to(self._state_dir)).replace(os.sep, "__")
            os.rename(path, dest / name)
            moved.append(str(path))
        write_atomic(dest / "REASON", f"{why}\nmoved: {', '.join(moved) or 'nothing'}\n".encode(),
                     mode=0o600)
        log.error("damaged state quarantined", extra={
            "problem": why, "moved": ",".join(moved) or "none", "to": str(dest)})
        return dest
