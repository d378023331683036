"""How many log lines one kind of event may write: at most ``burst`` per key in each
``every``-second window; the first line after a held-back spell says how many were
held back. Keys are a small fixed set (operation and reason, a TLS failure's
cause), never client-chosen text, so the table stays small.

Why: every refusal of an unauthenticated client is worth a line, but a client
sending thousands of bad requests a second must not be able to grow the log at
that rate. ``/metrics`` still counts every one. Pure apart from the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcore.clock import Clock

BURST = 10
EVERY = 60.0


@dataclass
class _Window:
    start: float
    used: int = 0
    held: int = 0


class LogBudget:
    def __init__(self, clock: Clock, *, burst: int = BURST, every: float = EVERY) -> None:
        self._clock = clock
        self._burst = burst
        self._every = every
        self._windows: dict[str, _Window] = {}

    def take(self, key: str) -> str | None:
        """None: write no line. Else a suffix for the line: "", how many were held back
        in the last window, or a note that the rest of this window will be."""
        now = self._clock.monotonic()
        window = self._windows.get(key)
        if window is None or now - window.start >= self._every:
            held = 0 if window is None else window.held
            window = self._windows[key] = _Window(start=now)
            suffix = f" ({held} more held back)" if held else ""
        elif window.used >= self._burst:
            window.held += 1
            return None
        else:
            suffix = ""
        window.used += 1
        if window.used == self._burst:
            suffix += f" (lines like this are held back for the rest of {self._every:.0f} s)"
        return suffix
