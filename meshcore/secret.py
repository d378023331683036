"""A value that never prints: tokens, keys and metadata credentials are held
as ``Secret`` from the moment they are read, so no log line, repr or
exception message can carry them by accident."""

from __future__ import annotations

from typing import Final

REDACTED: Final = "<redacted>"


class Secret:
    """Wraps a secret string; only ``reveal()`` gives it back."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)
