"""A herd of VMs bootstrapping through two replicas on one PostgreSQL, one replica
killed with SIGKILL in the middle; every client that loses its replica retries at
the other, as a load balancer would make it.

What the database must guarantee whatever the moment of the kill: no join token
pays for two identities, no row is left half written (a workload without the
certificate it was answered with, or a certificate without its workload), and
every VM ends with an identity. A VM whose request had committed at the killed
replica but whose answer was lost with it retries at the other with its spent
token and the same key, and gets the certificate that spend paid for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from meshcore.clock import SystemClock
from registrar.store.tokens import TokenStore
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key

VMS = 2000
CLIENTS = 32


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory,
         postgres_server: PostgresServer) -> Iterator[tuple[RegistrarProcess, RegistrarProcess]]:
    base = tmp_path_factory.mktemp("failover")
    a = RegistrarProcess(base / "a", groups={"web": ("prod", "web-vm", 600)},
                         store={"type": "postgres", "dsn": postgres_server.new_database()})
    (base / "a").mkdir()
    b = a.replica(base / "b")
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.kill()
        b.kill()


def test_killing_a_replica_mid_herd_loses_no_row_and_spends_no_token_twice(
        pair: tuple[RegistrarProcess, RegistrarProcess]) -> None:
    a, b = pair
    conn = a.db()
    try:
        tokens = [t.reveal() for t in TokenStore(conn, SystemClock()).create_many(
            "web", 3600, VMS)]
    finally:
        conn.close()
    csrs = [csr_pem(ec_key()) for _ in range(VMS)]
    outcome: dict[int, str] = {}
    in_flight_at_kill: list[int] = []
    in_flight: set[int] = set()
    lock = threading.Lock()
    killed = threading.Event()

    def bootstrap(i: int) -> None:
        order = (a, b) if i % 2 else (b, a)
        attempt = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            reg = order[attempt % 2] if not (killed.is_set() and order[attempt % 2] is a) else b
            attempt += 1
            with lock:
                in_flight.add(i)
            try:
                with calls.client(reg) as c:
                    response = c.post("/v1/attest", json=calls.attest_body(
                        tokens[i], csrs[i], hostname=f"vm-{i}"))
            except httpx.TransportError:
                continue  # the balancer would send the retry elsewhere
            finally:
                with lock:
                    in_flight.discard(i)
            if response.status_code == 200:
                outcome[i] = "identity"
                return
            body = response.json()
            if body["action"] == "retry":
                time.sleep(min(2.0, float(response.headers.get("Retry-After", "1"))))
                continue
            outcome[i] = body["reason"]
            return
        outcome[i] = "gave_up"

    def killer() -> None:
        while len(outcome) < VMS // 3:
            time.sleep(0.01)
        with lock:
            in_flight_at_kill.extend(in_flight)
        a.kill()
        killed.set()

    watcher = threading.Thread(target=killer)
    watcher.start()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(bootstrap, range(VMS)))
    watcher.join(timeout=60)
    assert killed.is_set()
    results = list(outcome.values())
    assert results.count("identity") == VMS, {r: results.count(r) for r in set(results)}
    rows = b.sql("SELECT w.state, count(*) FROM workloads w GROUP BY w.state")
    assert rows == [("active", VMS)], rows  # one workload per spent token, all active
    assert b.sql("SELECT count(*) FROM tokens WHERE used_at IS NULL") == [(0,)]
    assert b.sql("SELECT count(*) FROM certs") == [(VMS,)]
    assert b.sql("SELECT count(*) FROM workloads w WHERE NOT EXISTS (SELECT 1 FROM certs c"
                 " WHERE c.serial = w.current_serial AND c.workload_id = w.id)") == [(0,)]
    assert b.sql("SELECT count(DISTINCT subject) FROM workloads") == [(VMS,)]
    print(f"failover: {results.count('identity')} identities ({len(in_flight_at_kill)} "
          "requests in flight at the kill)")


