"""The state directory before anything uses it: present, writable, and free of
temp files a killed write left behind.

An unusable state directory (a read-only mount, a file where the directory
should be, no permission) is a configuration problem: ``StateDirError``
names the path and the daemon exits with ``EX_CONFIG``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from meshcore.durable import TEMP_NAME, write_atomic

log = logging.getLogger(__name__)

_PROBE = ".write-probe"


class StateDirError(Exception):
    """The state directory cannot be created, read or written."""


def prepare_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` (0700), prove it writable and remove stale temp files."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not state_dir.is_dir():
            raise NotADirectoryError(20, "not a directory", str(state_dir))
        # A real write, with the same calls every later write makes: access()
        # says yes on a read-only mount for root.
        write_atomic(state_dir / _PROBE, b"", mode=0o600)
        (state_dir / _PROBE).unlink()
        os.listdir(state_dir)
    except OSError as exc:
        raise StateDirError(
            f"state directory {state_dir} is not usable: {exc.strerror or exc} "
            f"(it must be a writable directory for the agent; check the mount and its "
            f"permissions, or set state_dir)") from None
    remove_temps(state_dir)


def remove_temps(root: Path) -> int:
    """Remove every temp file ``meshcore.durable`` names under ``root``; returns
    how many. Only names of that exact form, so nothing else is touched."""
    removed = 0
    pattern = re.compile(TEMP_NAME)
    for directory, _dirs, files in os.walk(root):
        for name in files + [d for d in _dirs if os.path.islink(os.path.join(directory, d))]:
            if pattern.fullmatch(name):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    if removed:
        log.info("removed temp files left by an interrupted write",
                 extra={"count": removed, "under": str(root)})
    return removed
