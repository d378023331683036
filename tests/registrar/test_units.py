"""Pure parts, table-driven: CSR policy, token buckets, token and challenge stores, and
the inventory's single-statement writes on both stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshcore.clock import SystemClock
from meshcore.secret import Secret
from registrar.api.metrics import Metrics, prepare_shared
from registrar.api.ratelimit import RateLimiter, TokenBucket
from registrar.ca.csr import check_csr
from registrar.config import Rate
from registrar.rejections import Rejected
from registrar.store.challenges import ChallengeStore
from registrar.store.db import connect
from registrar.store.inventory import Inventory
from registrar.store.tokens import NotSpent, Receipt, TokenStore
from tests.fakes.clock import FakeClock
from tests.registrar.csrs import bad_signature_pem, csr_pem, ec_key

ID = "spiffe://td/ns/a/sa/b"


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: csr_pem(ec_key()), None),
    (lambda: csr_pem(ec_key(ec.SECP384R1())), None),
    (lambda: csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), None),
    (lambda: csr_pem(ec_key(), uris=(ID,)), None),
    (lambda: csr_pem(ec_key(), ca=False), None),
    (lambda: csr_pem(ec_key(ec.SECP521R1())), "csr_key_unsupported"),
    (lambda: csr_pem(ed25519.Ed25519PrivateKey.generate()), "csr_key_unsupported"),
    (lambda: csr_pem(ec_key(), ca=True), "csr_ca_requested"),
    (lambda: bad_signature_pem(ec_key()), "csr_signature_invalid"),
    (lambda: csr_pem(ec_key(), uris=(ID, "spiffe://td/ns/a/sa/c")), "csr_identity_mismatch"),
    (lambda: "not a csr", "csr_invalid"),
    (lambda: "x" * 20_000, "csr_invalid"),
])
def test_csr_policy(make: object, reason: str | None) -> None:
    try:
        check_csr(make()).require_identity(ID)  # type: ignore[operator]
    except Rejected as exc:
        assert exc.reason == reason
    else:
        assert reason is None


def test_token_bucket_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Rate(per_second=2.0, burst=3), clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take() == 0.0
    clock.advance(100.0)
    assert [bucket.take() for _ in range(4)][-1] > 0  # capped at burst


def test_token_store_states_and_single_spend(store_db: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    store = TokenStore(store_db, clock=clock)
    _, token = store.create("g", ttl=60)
    assert token.reveal() not in repr(token) and len(token.reveal()) >= 43
    row = store.check(token)
    first, second = store.spend_statement(row.id), store.spend_statement(row.id)
    assert store_db.execute(first.sql, first.params).rowcount == 1
    assert store_db.execute(second.sql, second.params).rowcount == 0  # spent once only
    assert store.refusal(row.id).reason == "token_spent"
    _, other = store.create("g", ttl=60)
    clock.advance(61)
    with pytest.raises(Rejected) as expired:
        store.check(other)
    assert expired.value.reason == "token_expired"
    with pytest.raises(Rejected) as invalid:
        store.check(Secret("nope"))
    assert invalid.value.reason == "token_invalid"
    # Only the hash is stored.
    raw = repr(store_db.execute("SELECT * FROM tokens").fetchall()).encode()
    if isinstance(store_db, sqlite3.Connection):
        raw += (tmp_path / "registrar.db").read_bytes()
    assert token.reveal().encode() not in raw and other.reveal().encode() not in raw


def _counts(conn: Any) -> tuple[int, int, int]:
    row = conn.execute("SELECT (SELECT COUNT(*) FROM workloads), (SELECT COUNT(*) FROM certs),"
                       " (SELECT COUNT(*) FROM tokens WHERE used_at IS NOT NULL)").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def test_a_record_paid_by_a_spend_is_all_or_nothing(store_db: Any) -> None:
    """The spend, the workload and its certificate are one write (on PostgreSQL one
    statement): a spend that matches no row records nothing."""
    clock = FakeClock()
    tokens, inventory = TokenStore(store_db, clock=clock), Inventory(store_db, clock)
    _, token = tokens.create("g", ttl=60)
    token_id = tokens.check(token).id

    def record(serial: str) -> Any:
        receipt = Receipt(key_sha256="ab" * 32, serial=serial, chain_pem="PEM")
        return inventory.record_attestation(
            evidence_type="join_token", subject=token_id, spiffe_id=ID, group="g",
            hostname="vm", addresses=["10.0.0.9"], serial=serial, not_after=2e9,
            spend=tokens.spend_statement(token_id, receipt))

    workload = record("0a")
    assert (workload.subject, workload.hostname, workload.addresses) == (
        token_id, "vm", ("10.0.0.9",))
    assert _counts(store_db) == (1, 1, 1)
    with pytest.raises(NotSpent):
        record("0b")  # spent already: no second certificate, no changed workload
    assert _counts(store_db) == (1, 1, 1)
    assert tokens.refusal(token_id).reason == "token_spent"
    _, late = tokens.create("g", ttl=60)
    late_id = tokens.check(late).id
    clock.advance(61)
    with pytest.raises(NotSpent):
        inventory.record_attestation(
            evidence_type="join_token", subject=late_id, spiffe_id=ID, group="g",
            hostname="vm", addresses=[], serial="0c", not_after=2e9,
            spend=tokens.spend_statement(late_id))
    assert _counts(store_db) == (1, 1, 1)
    assert tokens.refusal(late_id).reason == "token_expired"


def test_attesting_again_updates_the_one_workload_and_keeps_a_revocation(
        store_db: Any) -> None:
    """Evidence with nothing to spend (GCE, Azure): the upsert and the certificate in
    one write, on PostgreSQL one statement; a second attestation of the subject."""
    inventory = Inventory(store_db, FakeClock())

    def attest(serial: str, hostname: str) -> Any:
        return inventory.record_attestation(
            evidence_type="gce", subject="gce:p:1", spiffe_id=ID, group="g",
            hostname=hostname, addresses=[], serial=serial, not_after=2e9)

    first = attest("a1", "vm-a")
    again = attest("a2", "vm-b")
    assert (again.id, again.hostname, again.state) == (first.id, "vm-b", "active")
    assert _counts(store_db)[:2] == (1, 2)
    assert inventory.set_state(first.id, "revoked")
    assert attest("a3", "vm-c").state == "revoked"  # the operator's call stands
    assert _counts(store_db)[:2] == (1, 3)


def test_a_renewal_by_a_retired_certificate_records_nothing(store_db: Any) -> None:
    inventory = Inventory(store_db, FakeClock())
    w = inventory.record_attestation(evidence_type="join_token", subject="t1", spiffe_id=ID,
                                     group="g", hostname="vm", addresses=[], serial="01",
                                     not_after=2e9)

    def renew(presented: str, serial: str) -> bool:
        return inventory.record_renewal(w.id, presented=presented, hostname=None,
                                        addresses=None, serial=serial, spiffe_id=ID,
                                        not_after=2e9)

    assert renew("01", "02")  # current renews: 02 pending
    assert renew("02", "03")  # pending renews: 02 promoted, 03 pending, 01 retired
    assert not renew("01", "04")
    assert _counts(store_db)[:2] == (1, 3)
    owner = inventory.owner("03")
    assert owner is not None and owner.standing == "pending"
    assert inventory.owner("04") is None


def test_challenge_is_single_use_and_expires(store_db: Any) -> None:
    clock = FakeClock()
    store = ChallengeStore(store_db, ttl=10, clock=clock)
    nonce, expires = store.issue()
    assert expires == clock.wall + 10 and store.consume(nonce) == nonce
    with pytest.raises(Rejected):
        store.consume(nonce)
    late, _ = store.issue()
    clock.advance(11)
    with pytest.raises(Rejected) as exc:
        store.consume(late)
    assert exc.value.reason == "challenge_invalid"


def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path: Path) -> None:
    from registrar.store.db import SCHEMA_VERSION, SchemaTooNew
    conn = connect(tmp_path / "db")
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    connect(tmp_path / "db").close()  # reopening migrates nothing and keeps data
    conn = connect(tmp_path / "db")
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(SchemaTooNew):
        connect(tmp_path / "db")


def test_first_use_claim_is_atomic_across_connections(
        store_opener: Callable[[], Any]) -> None:
    """Two worker processes (or replicas) = two connections; of parallel claims
    exactly one wins."""
    from concurrent.futures import ThreadPoolExecutor

    from registrar.store.inventory import Inventory
    inventories = [Inventory(store_opener(), SystemClock()) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(lambda inv: inv.claim_first_use("aws", "aws:1:i-1"), inventories))
    assert wins.count(True) == 1
    first = inventories[0]
    assert not first.claim_first_use("aws", "aws:1:i-1")  # active: refused
    workload = first.list()[0]
    first.set_state(workload.id, "evicted")
    assert first.claim_first_use("aws", "aws:1:i-1")  # evicted: one more first use
    first.set_state(workload.id, "revoked")
    assert not first.claim_first_use("aws", "aws:1:i-1")


def test_rate_limiter_retry_after_follows_the_injected_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"attest": Rate(per_second=0.25, burst=1),
                           "read": Rate(per_second=1.0, burst=1)}, clock)
    assert limiter.retry_after("attest") is None
    assert limiter.retry_after("attest") == 4  # whole seconds, rounded up
    assert limiter.retry_after("read") is None  # each family has its own bucket
    clock.advance(3.5)
    assert limiter.retry_after("attest") == 1  # 0.5 s left, never 0
    clock.advance(0.5)
    assert limiter.retry_after("attest") is None


def test_metrics_histogram_is_cumulative_and_shared_file_sums_writers(tmp_path: Path) -> None:
    shared = prepare_shared(tmp_path / "metrics")
    workers = [Metrics(lambda: 0, shared, monotonic=lambda: 0.0) for _ in range(2)]
    workers[0].decision("attest", None, 0.003)
    workers[1].decision("attest", None, 7.0)
    workers[1].decision("attest", "token_spent", 0.003)
    # Counted in memory until a flush (a second later, the server's tick, or a render
    # of its own): worker 0's page holds its own count only, until worker 1 flushes.
    assert ('registrar_request_seconds_count{operation="attest"} 1.0'
            in workers[0].render().decode())
    workers[1].flush()
    text = workers[0].render().decode()
    assert 'registrar_request_seconds_bucket{le="0.0025",operation="attest"} 0.0' in text
    assert 'registrar_request_seconds_bucket{le="0.005",operation="attest"} 2.0' in text
    assert 'registrar_request_seconds_bucket{le="2.5",operation="attest"} 2.0' in text
    assert 'registrar_request_seconds_bucket{le="+Inf",operation="attest"} 3.0' in text
    assert 'registrar_request_seconds_sum{operation="attest"} 7.006' in text
    assert ('registrar_requests_total{operation="attest",reason="token_spent",'
            'result="rejected"} 1.0') in text
    assert text == workers[1].render().decode()


def test_metrics_reach_the_shared_table_within_a_second_without_a_scrape(
        tmp_path: Path) -> None:
    now = [0.0]
    shared = prepare_shared(tmp_path / "metrics")
    writer, reader = (Metrics(lambda: 0, shared, monotonic=lambda: now[0]) for _ in range(2))
    line = 'registrar_requests_total{operation="renew",reason="",result="ok"}'
    writer.decision("renew", None, 0.01)
    assert line not in reader.render().decode()  # a request never waits on the file
    now[0] = 0.999
    writer.decision("renew", None, 0.01)
    assert line not in reader.render().decode()
    now[0] = 1.0  # a second after the last flush, the next decision adds both
    writer.decision("renew", None, 0.01)
    assert f"{line} 3.0" in reader.render().decode()
