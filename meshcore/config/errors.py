"""The one error type for bad configuration: it names the file, the key and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.exits import EX_CONFIG

__all__ = ["EX_CONFIG", "ConfigError", "ConfigWarning", "shown"]

# How much of an offending value an error quotes: enough to recognise it, and
# a 5 MB value must not become a 5 MB log line.
SHOWN_CHARS = 80
_PART_CHARS = 400


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, with an ellipsis when cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _capped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class ConfigError(Exception):
    """A configuration value that cannot be used.

    ``str()`` is the operator-facing message: ``FILE: KEY: PROBLEM (allowed: ...)``.
    The process exits with EX_CONFIG (78) on it and systemd does not restart it.
    """

    def __init__(self, file: str, key: str, problem: str, allowed: str = "") -> None:
        # Every part is capped: whatever a caller quotes, the message stays one short line.
        self.file = file = _capped(file, _PART_CHARS)
        self.key = key = _capped(key, SHOWN_CHARS)
        self.problem = problem = _capped(problem, _PART_CHARS)
        self.allowed = allowed = _capped(allowed, _PART_CHARS)
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
