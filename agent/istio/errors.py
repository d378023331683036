"""Errors in the files ``istioctl x workload entry configure`` writes.

They are configuration errors (exit 78): the operator must regenerate or fix a
file. The message names the file and line, as ``FILE:LINE: WHAT: PROBLEM``.
"""

from __future__ import annotations

from pathlib import Path

from meshcore.config.errors import ConfigError


def file_error(path: Path, line: int, what: str, problem: str, expected: str = "") -> ConfigError:
    """A ``ConfigError`` whose "file" is ``path:line``; ``what`` is the variable or field."""
    return ConfigError(f"{path}:{line}", what, problem, expected)
