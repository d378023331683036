"""A registrar killed with SIGKILL in the middle of a 2,000-VM herd and started again
on the same state: every VM ends with exactly one identity, no join token is spent
twice, and the inventory holds exactly one active workload per VM and nothing else.

The herd client (tests/fixtures/herd.py) retries a connection that died without
an answer, as an agent does, with the same key; with one address the retry waits
for the restart. An attest whose transaction committed but whose answer the kill
cut off (between COMMIT and the socket write) is retried with its spent token and
the same key, and answered with the certificate that spend paid for: no VM may
end without an identity (no ``lost_response``), and no token pays for two.
"""

from __future__ import annotations

from collections.abc import Callable

from meshcore.clock import SystemClock
from registrar.store.tokens import TokenStore
from tests.fixtures.herd import HerdSpec, run_herd, summarise
from tests.fixtures.registrar import RegistrarProcess

VMS = 2000
KILL_AFTER = 400  # VMs holding an identity when the registrar is killed


def test_kill_9_mid_herd_then_restart_loses_and_duplicates_nothing(
        registrar_factory: Callable[..., RegistrarProcess]) -> None:
    reg = registrar_factory(start=False, workers=2, groups={"herd": ("herd", "vm", 3600)},
                            config={"log_level": "warning", "limits": {
                                "rate": {"attest": {"per_second": 1e6, "burst": 1_000_000},
                                         "renew": {"per_second": 1e6, "burst": 1_000_000}},
                                "max_connections_per_address": 10_000}})
    conn = reg.db()  # the registrar's own store: SQLite or PostgreSQL
    try:
        tokens = [t.reveal() for t in TokenStore(conn, SystemClock()).create_many(
            "herd", 3600, VMS)]
    finally:
        conn.close()
    reg.start()
    killed_at: list[int] = []

    def kill_once(with_identity: int) -> None:
        if not killed_at and with_identity >= KILL_AFTER:
            killed_at.append(with_identity)
            reg.kill()
            reg.start(timeout=120)

    outcomes = run_herd(HerdSpec(addresses=[(reg.host, reg.port)], ca_file=str(reg.ca_file)),
                        tokens, concurrency=100, procs=2, on_progress=kill_once)
    summary = summarise(outcomes)

    assert killed_at, "the herd ended before the registrar could be killed"
    assert summary.no_answer > 0, "the kill hit no VM mid-request: it was not mid-herd"
    print(summary.line())
    assert (summary.errors, summary.lost_responses) == (0, 0), summary.line()
    serials = [o.serial for o in outcomes]
    assert all(serials) and len(set(serials)) == VMS  # one identity per VM, none shared

    spent = reg.sql("SELECT COUNT(*) FROM tokens WHERE used_at IS NOT NULL")
    assert [tuple(r) for r in spent] == [(VMS,)]
    workloads = reg.sql(
        "SELECT subject, state, COALESCE(pending_serial, current_serial) FROM workloads")
    token_ids = {row[0] for row in reg.sql("SELECT id FROM tokens")}
    orphans = reg.sql("SELECT COUNT(*) FROM certs WHERE workload_id NOT IN "
                      "(SELECT id FROM workloads)")
    # Exactly one workload per token (a token spent twice would make two), all active,
    # and what each holds to renew with is the certificate one VM ended with.
    assert len(workloads) == VMS
    assert {w[0] for w in workloads} == token_ids
    assert {w[1] for w in workloads} == {"active"}
    # What each workload holds to renew with is exactly the certificate its VM ended with.
    assert {w[2] for w in workloads} == set(serials)
    assert [tuple(r) for r in orphans] == [(0,)]
