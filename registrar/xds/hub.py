"""The xDS server's state: the current catalog, one snapshot per (identity, SDS dir),
the streams that watch each, and the loop that notices catalog changes.

Change detection: every ``poll_interval`` (50 ms by default) one ``SELECT`` of
``mesh_changes.counter`` (bumped by triggers on every catalog write, from any
process); about 10 us each, so polling costs nothing measurable and needs no
inotify on a WAL file. Bursts are debounced (Istio's pilot): a rebuild waits
for ``debounce_quiet`` without changes but never longer than ``debounce_max``
after the first one. Once a second the catalog is re-read anyway, because
health also changes with the clock (a silent VM goes stale).

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
HEALTH_TICK = 1.0


class Watcher(Protocol):
    def wake(self) -> None: ...


class Hub:
    def __init__(self, load: Callable[[], Catalog], changes: Callable[[], int], *,
                 clock: Clock, quiet: float, max_delay: float, poll: float) -> None:
        self._load = load
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

    async def run(self, stop: asyncio.Event) -> None:
        first = last = 0.0
        pending = False
        next_tick = self._clock.monotonic() + HEALTH_TICK
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
                next_tick = now + HEALTH_TICK
                try:
                    woken = self.refresh()
                except Exception:
                    log.exception("catalog refresh failed; keeping the last snapshot")
                    continue
                if woken:
                    log.info("catalog changed: %d stream(s) to update", woken)
