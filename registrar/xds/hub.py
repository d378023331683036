"""The xDS server's state: the current catalog, one snapshot per (identity, SDS dir),
the streams that watch each, and the loop that notices catalog changes.

Change detection: every ``poll_interval`` (50 ms by default) one ``SELECT`` of
``mesh_changes.counter`` (bumped by triggers on every catalog write, from any
process); about 10 us each, so polling costs nothing measurable and needs no
inotify on a WAL file. Bursts are debounced (Istio's pilot): a rebuild waits
for ``debounce_quiet`` without changes but never longer than ``debounce_max``
after the first one. Without a write, only the clock changes a snapshot: a VM
whose last report grows older than the grace period goes stale. So the catalog
is also re-read when the earliest such deadline passes (and at least every
``MAX_IDLE`` seconds as a safety net), not on a fixed tick: with 1,000
workloads one read costs tens of milliseconds, and the former once-a-second
re-read was a fifth of the xDS process's CPU in scripts/bench/xds_push.py.

A rebuild that changes nothing (same catalog) pushes nothing; a rebuild only
wakes the streams whose own snapshot versions changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from meshcore.clock import Clock
from registrar.catalog.model import Catalog
from registrar.xds.resources import NodeFiles
from registrar.xds.snapshot import build
from registrar.xds.wire import WireSnapshot, to_wire

log = logging.getLogger("registrar.xds")
Key = tuple[str, NodeFiles]
MAX_IDLE = 30.0
# Re-read just after a deadline: staleness is ``now - last_seen > grace``.
STALE_SLACK = 0.05


def next_stale(catalog: Catalog, grace: float, counted_from: float = 0.0) -> float | None:
    """Wall-clock time at which the earliest reporting workload goes stale, if any
    (silence counted from ``counted_from`` at the earliest, as ``load`` counts it)."""
    deadlines = [max(w.last_seen, counted_from) + grace for w in catalog.workloads
                 if w.health_reason == "reported" and w.last_seen]
    return min(deadlines) if deadlines else None


class Watcher(Protocol):
    def wake(self) -> None: ...


class Hub:
    def __init__(self, load: Callable[[], Catalog], changes: Callable[[], int], *,
                 clock: Clock, quiet: float, max_delay: float, poll: float,
                 grace: float | None = None, counted_from: float = 0.0) -> None:
        """``grace``: the health grace period ``load`` applies (None: no staleness);
        ``counted_from``: the time ``load`` counts silence from at the earliest."""
        self._load = load
        self._grace = grace
        self._counted_from = counted_from
        self._changes = changes
        self._clock = clock
        self._quiet, self._max, self._poll = quiet, max_delay, poll
        self._counter = changes()
        self.catalog = load()
        self._snapshots: dict[Key, WireSnapshot] = {}
        self._watchers: dict[Key, set[Watcher]] = {}
        self.rebuilds = 0

    def snapshot(self, key: Key) -> WireSnapshot:
        snap = self._snapshots.get(key)
        if snap is None:
            snap = self._snapshots[key] = to_wire(build(self.catalog, key[0], key[1]))
        return snap

    def watch(self, key: Key, watcher: Watcher) -> None:
        self._watchers.setdefault(key, set()).add(watcher)

    def unwatch(self, key: Key, watcher: Watcher) -> None:
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[key]
                self._snapshots.pop(key, None)

    def refresh(self) -> int:
        """Re-read the catalog; rebuild and wake where a snapshot changed. Returns the
        number of streams woken."""
        catalog = self._load()
        if catalog == self.catalog:
            return 0
        self.catalog = catalog
        self.rebuilds += 1
        woken = 0
        for key in list(self._snapshots):
            old = self._snapshots[key]
            new = build(catalog, key[0], key[1])
            if new.versions == old.versions:
                continue
            self._snapshots[key] = to_wire(new)
            for watcher in self._watchers.get(key, ()):
                watcher.wake()
                woken += 1
        return woken

    def _next_read(self, now: float) -> float:
        """Monotonic time of the next re-read that no write asks for."""
        wait = MAX_IDLE
        stale = (next_stale(self.catalog, self._grace, self._counted_from)
                 if self._grace is not None else None)
        if stale is not None:
            wait = min(wait, max(0.0, stale - self._clock.now().timestamp()) + STALE_SLACK)
        return now + wait

    async def run(self, stop: asyncio.Event) -> None:
        first = last = 0.0
        pending = False
        next_tick = self._next_read(self._clock.monotonic())
        while not stop.is_set():
            await self._clock.sleep(self._poll)
            now = self._clock.monotonic()
            counter = self._changes()
            if counter != self._counter:
                self._counter = counter
                if not pending:
                    first, pending = now, True
                last = now
            due = pending and (now - last >= self._quiet or now - first >= self._max)
            if due or now >= next_tick:
                pending = False
                try:
                    woken = self.refresh()
                except Exception:
                    log.exception("catalog refresh failed; keeping the last snapshot")
                    next_tick = now + 1.0  # try again soon
                    continue
                next_tick = self._next_read(now)
                if woken:
                    log.info("catalog changed: %d stream(s) to update", woken)
