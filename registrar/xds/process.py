"""The xDS server process: ``mesh-registrar serve`` forks exactly one when
``xds: {listen: ADDR:PORT}`` is configured.

One process, not one per API worker: ADS streams are long-lived and stateful
(versions and nonces per stream), every change must be read from the catalog
and built into snapshots once, not once per worker, and identical nodes share
one snapshot only if they share a process. gRPC is imported only here, after
the fork (grpc's core must not be initialised in a process that forks).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from meshcore.clock import SystemClock
from registrar.catalog.store import change_counter, load_catalog
from registrar.config import RegistrarConfig
from registrar.store.connection import open_store
from registrar.store.inventory import Inventory

log = logging.getLogger("registrar.xds")
FLUSH_INTERVAL = 1.0
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
TRIM_AFTER_STREAMS = 50  # streams opened or closed since the last trim


def _authorizer(inventory: Inventory) -> Callable[[str, str], str | None]:
    def authorize(serial: str, spiffe_id: str) -> str | None:
        owner = inventory.owner(serial)
        if owner is None:
            return "certificate not issued by this registrar's inventory"
        if owner.spiffe_id != spiffe_id:
            return "certificate identity does not match the inventory"
        if owner.workload.state != "active":
            return f"workload {owner.workload.id} is {owner.workload.state}"
        return None
    return authorize


async def serve_xds(config: RegistrarConfig, *, watch_parent: bool) -> None:
    from registrar.ca.live import xds_pems
    from registrar.xds.hub import Hub
    from registrar.xds.server import rotating_credentials, start
    from registrar.xds.status import XdsStatus

    conn = open_store(config)
    mesh = config.mesh
    status = XdsStatus(conn, replica=f"{socket.gethostname()}:{mesh.xds_port}")
    status.reset()
    # Silence is counted from this process's start at the earliest: VMs could not
    # report while no registrar ran (see load_catalog).
    started = time.time()
    hub = Hub(lambda: load_catalog(conn, config, time.time(), counted_from=started),
              lambda: change_counter(conn), clock=SystemClock(), quiet=mesh.debounce_quiet,
              max_delay=mesh.debounce_max, poll=mesh.poll_interval, grace=mesh.health_grace,
              counted_from=started)
    credentials = rotating_credentials(*xds_pems(config))
    host = f"[{mesh.xds_host}]" if ":" in (mesh.xds_host or "") else mesh.xds_host
    clock = SystemClock()
    server = await start(hub, status, _authorizer(Inventory(conn, clock)),
                         f"{host}:{mesh.xds_port}", credentials)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(hub.run(stop))
    parent = os.getppid()
    log.info("xds serving %s:%d pid=%d", mesh.xds_host, mesh.xds_port, os.getpid())
    trimmed = 0
    try:
        while not stop.is_set():
            if watch_parent and os.getppid() != parent:
                break  # the supervisor died: do not linger as an orphan
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL)
            status.flush(time.time())
            if abs(len(status.streams) - trimmed) >= TRIM_AFTER_STREAMS:
                trimmed = len(status.streams)
                release_free_memory()
    finally:
        stop.set()
        await server.stop(grace=1.0)
        watcher.cancel()
        status.flush(time.time())


def fewer_malloc_arenas() -> None:
    """glibc gives threads that allocate their own malloc arenas (up to 8 per core);
    gRPC's threads then each keep one partly used. Two arenas, set before gRPC
    starts a thread, lower the RSS per idle ADS connection (scripts/bench/xds_push.py).
    Not glibc (no ``mallopt``): nothing to do."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``). Each TLS
    handshake leaves freed temporaries between the allocations that stay for the
    connection's life, which RSS keeps counting; once a wave of connections has
    come or gone, this returns them (measured in scripts/bench/xds_push.py)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_xds(config: RegistrarConfig) -> int:
    """Entry point of the forked xDS child; returns its exit code."""
    fewer_malloc_arenas()
    try:
        asyncio.run(serve_xds(config, watch_parent=True))
    except Exception:
        log.exception("xds server failed")
        return 1
    return 0
