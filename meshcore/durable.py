"""Atomic, durable file writes: the one way the agent writes a file that matters.

Temp file in the same directory, created with its final mode (never briefly
world-readable), written, fsynced, renamed over the target, directory fsynced.
A reader sees the old content or the new, never a torn file, even after
``kill -9`` or power loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

TEMP_NAME = r"\..+\.[0-9a-f]{12}\.tmp"
"""The name of every temp file written here (``.NAME.<12 hex>.tmp``), as a regex,
so start-up can remove exactly those a killed write left behind."""


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with ``mode``."""
    tmp = _temp_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (symlink to a temp name, rename over)."""
    tmp = _temp_for(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)


def remove_stale_temps(directory: Path) -> None:
    """Remove temp files left by a write that was killed before its rename."""
    for leftover in directory.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            leftover.unlink()
