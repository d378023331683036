"""The one error type for bad configuration: it names the file, the key and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.exits import EX_CONFIG

__all__ = ["EX_CONFIG", "ConfigError", "ConfigWarning"]


class ConfigError(Exception):
    """A configuration value that cannot be used.

    ``str()`` is the operator-facing message: ``FILE: KEY: PROBLEM (allowed: ...)``.
    The process exits with EX_CONFIG (78) on it and systemd does not restart it.
    """

    def __init__(self, file: str, key: str, problem: str, allowed: str = "") -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.allowed = allowed
        text = f"{file}: {key}: {problem}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


@dataclass(frozen=True)
class ConfigWarning:
    """A value that still works but should change (e.g. a deprecated key).

    ``str()`` names the file and the key like ``ConfigError`` does, so an
    operator can find the line: ``FILE: KEY: PROBLEM (use: INSTEAD)``.
    """

    file: str
    key: str
    problem: str
    instead: str = ""

    def __str__(self) -> str:
        text = f"{self.file}: {self.key}: {self.problem}"
        return f"{text} (use: {self.instead})" if self.instead else text
