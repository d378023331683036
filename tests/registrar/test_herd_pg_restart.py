"""PostgreSQL stopped (``pg_ctl stop -m immediate``: every connection cut) in the
middle of a herd of bootstrapping VMs and started again: requests during the
outage are answered 503 ``store_unavailable`` with Retry-After (never a 500, never
a dropped connection), every VM completes after the restart with exactly one
identity, and nothing is lost or doubled: one active workload per token, each
token spent once, every workload's renewable certificate the one its VM holds,
no orphaned certificate.

A commit whose acknowledgement the cut lost is answered 503 too; the VM's retry
then meets its own spent token (or an already recorded renewal) and is answered
with the same certificate (attest) or supersedes the unseen one (renew), so the
counts below are exact either way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshcore.clock import SystemClock
from registrar.store.tokens import TokenStore
from tests.fixtures.herd import HerdSpec, run_herd, summarise
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess

VMS = 600
STOP_AFTER = 150  # VMs holding an identity when PostgreSQL is stopped
REFUSED_DURING = 3  # herd requests answered 503 store_unavailable before the restart


@pytest.fixture
def reg(tmp_path_factory: pytest.TempPathFactory,
        postgres_server: PostgresServer) -> Iterator[RegistrarProcess]:
    base = tmp_path_factory.mktemp("herd-pg")
    reg = RegistrarProcess(base, groups={"herd": ("herd", "vm", 3600)}, workers=2,
                           store={"type": "postgres", "dsn": postgres_server.new_database()},
                           config={"log_level": "info", "limits": {
                               "rate": {"attest": {"per_second": 1e6, "burst": 1_000_000},
                                        "renew": {"per_second": 1e6, "burst": 1_000_000}},
                               "max_connections_per_address": 10_000}})
    try:
        reg.start()
        yield reg
    finally:
        reg.kill()
        postgres_server.start_if_stopped()


def _store_unavailable(reg: RegistrarProcess) -> int:
    """Herd requests (attest, renew) answered 503 store_unavailable so far, from the
    registrar's log (one line each, up to its per-cause budget of 10 a minute)."""
    return sum(f"{op} rejected reason=store_unavailable" in line
               for line in reg.log_text().splitlines() for op in ("attest", "renew"))


def test_postgres_restarted_mid_herd_loses_and_duplicates_nothing(
        reg: RegistrarProcess, postgres_server: PostgresServer) -> None:
    conn = reg.db()
    try:
        tokens = [t.reveal() for t in TokenStore(conn, SystemClock()).create_many(
            "herd", 3600, VMS)]
    finally:
        conn.close()
    outage: list[int] = []

    def restart_once(with_identity: int) -> None:
        if outage or with_identity < STOP_AFTER:
            return
        outage.append(with_identity)
        postgres_server.stop_immediate()
        # Down until the herd has met the outage, whatever the machine's load.
        deadline = time.monotonic() + 120
        while (seen := _store_unavailable(reg)) < REFUSED_DURING:
            assert time.monotonic() < deadline, f"only {seen} store_unavailable answers"
            time.sleep(0.1)
        outage.append(seen)
        postgres_server.start()

    outcomes = run_herd(HerdSpec(addresses=[(reg.host, reg.port)], ca_file=str(reg.ca_file)),
                        tokens, concurrency=60, procs=2, on_progress=restart_once)
    summary = summarise(outcomes)
    print(summary.line(), f"(store_unavailable answers during the outage: {outage[1:]})")

    assert outage, "the herd ended before PostgreSQL could be stopped"
    assert summary.answered_503 >= REFUSED_DURING, summary.line()
    assert summary.no_answer == 0, summary.line()  # the registrar answered throughout
    assert (summary.errors, summary.lost_responses) == (0, 0), summary.line()
    serials = [o.serial for o in outcomes]
    assert all(serials) and len(set(serials)) == VMS  # one identity per VM, none shared

    assert reg.sql("SELECT COUNT(*) FROM tokens WHERE used_at IS NOT NULL") == [(VMS,)]
    workloads = reg.sql(
        "SELECT subject, state, COALESCE(pending_serial, current_serial) FROM workloads")
    assert len(workloads) == VMS
    assert {w[0] for w in workloads} == {r[0] for r in reg.sql("SELECT id FROM tokens")}
    assert {w[1] for w in workloads} == {"active"}
    assert {w[2] for w in workloads} == set(serials)
    assert reg.sql("SELECT COUNT(*) FROM certs WHERE workload_id NOT IN "
                   "(SELECT id FROM workloads)") == [(0,)]
    log = reg.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
