"""Unexpected errors (bugs, a broken disk): logged once per distinct cause a
minute, with the traceback the first time, so a client that can trigger one
cannot flood the log; every occurrence is still counted in ``/metrics``.

A cause is the exception type and the line that raised it. Pure apart from the
injected clock.
"""

from __future__ import annotations

import logging
import traceback

from meshcore.clock import Clock

log = logging.getLogger("registrar.decisions")

EVERY = 60.0


class FaultLog:
    def __init__(self, clock: Clock, every: float = EVERY) -> None:
        self._clock = clock
        self._every = every
        self._last: dict[str, float] = {}
        self._hidden: dict[str, int] = {}

    def report(self, exc: BaseException, path: str) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "-"
        cause = f"{type(exc).__name__} at {where}"
        now = self._clock.monotonic()
        last = self._last.get(cause)
        if last is not None and now - last < self._every:
            self._hidden[cause] = self._hidden.get(cause, 0) + 1
            return
        self._last[cause] = now
        hidden = self._hidden.pop(cause, 0)
        more = f" ({hidden} more since the last report)" if hidden else ""
        # The path is one of our routes (the caller passes only known ones).
        log.error("internal error handling %s: %s%s; this cause is logged at most once "
                  "a minute", path, cause, more, exc_info=last is None)
