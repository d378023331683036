"""xDS across replicas: a change made through replica A reaches an ADS client
subscribed to replica B's xDS server.

Each replica's xDS server learns of catalog changes from the store, not from its
own API process: it polls ``mesh_changes.counter`` (``xds.poll_interval``),
which triggers bump on every catalog write, from any process of any replica.
On PostgreSQL that counter is shared by every replica, so nothing else is
needed to carry a change across; this test is what shows it.

Each wait allows MAX_IDLE / 3 (10 s): generous next to the 50 ms poll and the
debounce, yet shorter than the idle re-read every xDS server does on its own
every MAX_IDLE seconds (no VM goes stale: health_grace is 1 h). Without the
counter, a change would reach B only at that re-read; of two changes in a row
at least one must wait for it, so the test fails.

PostgreSQL only: two ``serve`` processes on one SQLite file are not a supported
deployment (see docs/registrar.md, "Running more than one registrar").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registrar.xds.hub import MAX_IDLE
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar.xds.replicas import ORDERS_PORT, ORDERS_SERVICE, EdsWatch, Vm, start_pair

WAIT = MAX_IDLE / 3
ORDERS_ADDRESS = "127.0.0.2"
ENDPOINT = f"{ORDERS_ADDRESS}:{ORDERS_PORT}"


@pytest.fixture
def pair(tmp_path: Path, postgres_server: PostgresServer,
         ) -> Iterator[tuple[RegistrarProcess, RegistrarProcess]]:
    a = b = None
    try:
        a, b = start_pair(tmp_path, postgres_server.new_database())
        yield a, b
    finally:
        for name, reg in (("A", a), ("B", b)):
            if reg is not None:
                reg.kill()
                print(f"--- replica {name} log (tail)\n{reg.log_text()[-3000:]}")


def test_a_change_through_replica_a_reaches_a_client_of_replica_b(
        pair: tuple[RegistrarProcess, RegistrarProcess], tmp_path: Path) -> None:
    a, b = pair
    a.cli("service", "add", *ORDERS_SERVICE)
    frontend, orders = Vm(tmp_path, "frontend"), Vm(tmp_path, "orders")
    frontend.attest(b)
    watches = {"b": EdsWatch("B", b, frontend), "a": EdsWatch("A", a, frontend)}
    try:
        for watch in watches.values():
            # Subscribed (a process that imports grpc first): no endpoint yet.
            watch.wait([], since=0, timeout=60)

        def through_a(what: str, change: Callable[[], object], endpoints: list[str]) -> None:
            since = time.time()
            change()
            delays = {name: watch.wait(endpoints, since=since, timeout=WAIT)
                      for name, watch in watches.items()}
            print(f"{what}: at B's client after {delays['b'] * 1000:.0f} ms "
                  f"(A's own client: {delays['a'] * 1000:.0f} ms)")

        def register() -> None:
            orders.attest(a)
            orders.report(a, ORDERS_ADDRESS, "healthy")

        # A workload registered and reported healthy, all through replica A.
        through_a("attest + healthy report at A", register, [ENDPOINT])
        through_a("unhealthy report at A",
                  lambda: orders.report(a, ORDERS_ADDRESS, "unhealthy"), [])
        through_a("healthy report at A",
                  lambda: orders.report(a, ORDERS_ADDRESS, "healthy"), [ENDPOINT])
        # Revocation is an operator's command on the store (neither replica's API).
        rows = json.loads(a.cli("workloads", "list", "--json").stdout)
        wid = next(r["id"] for r in rows if r["group"] == "orders")
        through_a("workloads revoke", lambda: a.cli("workloads", "revoke", str(wid)), [])
    finally:
        for watch in watches.values():
            watch.close()
