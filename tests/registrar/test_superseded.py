"""Only a workload's current certificate renews (or, until it is first used, the one
just issued for it): one certificate cannot fork several live identities, a lost
response can still be retried with the old certificate, and a renewal race
leaves exactly one certificate that can renew. Real registrar over real TLS."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from registrar.store.db import connect
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key, key_pem
from tests.registrar.test_renew import enrol, mtls

Pair = tuple[Path, Path]


def renew(reg: RegistrarProcess, pair: Pair) -> tuple[int, Any, Any]:
    """One renewal with ``pair`` on a fresh connection: (status, body, new key)."""
    key = ec_key()
    with mtls(reg, *pair) as c:
        status, body = calls.post(c, "/v1/renew", json={"csr": csr_pem(key)})
    return status, body, key


def store(where: Path, body: dict[str, Any], key: Any) -> Pair:
    where.mkdir(parents=True)
    (where / "cert-chain.pem").write_text(body["cert_chain"])
    (where / "key.pem").write_bytes(key_pem(key))
    return where / "cert-chain.pem", where / "key.pem"


def renewed(reg: RegistrarProcess, pair: Pair, where: Path) -> Pair:
    status, body, key = renew(reg, pair)
    assert status == 200, body
    return store(where, body, key)


def assert_superseded(reg: RegistrarProcess, pair: Pair) -> None:
    status, body, _ = renew(reg, pair)
    assert (status, body["reason"], body["action"]) == (403, "certificate_superseded",
                                                        "reattest"), body


def test_a_renewed_away_certificate_is_refused_and_counted(
        registrar: RegistrarProcess, tmp_path: Path) -> None:
    gen1 = enrol(registrar, tmp_path / "gen1")
    gen2 = renewed(registrar, gen1, tmp_path / "gen2")
    gen3 = renewed(registrar, gen2, tmp_path / "gen3")  # gen2 used: gen1 is dead now
    assert_superseded(registrar, gen1)
    renewed(registrar, gen3, tmp_path / "gen4")  # gen3 used: gen2 is dead now
    assert_superseded(registrar, gen2)
    assert_superseded(registrar, gen1)
    metrics = httpx.get(f"{registrar.url}/metrics", verify=calls.tls(registrar)).text
    line = next(m for m in metrics.splitlines() if 'reason="certificate_superseded"' in m
                and m.startswith("registrar_requests_total"))
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert calls.healthy(registrar)


def test_a_lost_response_is_retried_with_the_old_certificate(
        registrar: RegistrarProcess, tmp_path: Path) -> None:
    old = enrol(registrar, tmp_path / "old")
    lost = renewed(registrar, old, tmp_path / "lost")  # the agent never saw this answer
    retried = renewed(registrar, old, tmp_path / "retried")  # same old cert: still fine
    newest = renewed(registrar, retried, tmp_path / "newest")
    # The lost one was replaced by the retry, and using the retry retired the old one.
    assert_superseded(registrar, lost)
    assert_superseded(registrar, old)
    renewed(registrar, newest, tmp_path / "next")


def test_parallel_renewals_with_one_certificate_leave_one_that_can_renew(
        registrar_factory: Callable[..., RegistrarProcess], tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("default", "web-vm", 3600)}, workers=2)
    original = enrol(reg, tmp_path / "original")
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: renew(reg, original), range(20)))
    issued = [store(tmp_path / f"race-{i}", body, key)
              for i, (status, body, key) in enumerate(results) if status == 200]
    refused = [body["reason"] for status, body, _ in results if status != 200]
    assert set(refused) <= {"certificate_superseded"}, refused
    assert len(issued) >= 1
    attempts = [renew(reg, pair) for pair in issued]
    outcomes = [status for status, _, _ in attempts]
    assert outcomes.count(200) == 1, outcomes
    assert set(outcomes) <= {200, 403}
    assert_superseded(reg, original)
    _, body, key = attempts[outcomes.index(200)]
    successor = store(tmp_path / "successor", body, key)
    renewed(reg, successor, tmp_path / "after")  # the one lineage goes on
    assert_superseded(reg, issued[outcomes.index(200)])
    assert calls.healthy(reg)


def test_schema_1_databases_migrate_to_their_newest_certificate(tmp_path: Path) -> None:
    """An inventory written before schema 2 keeps renewing with each workload's newest
    certificate; older ones become superseded."""
    from meshcore.clock import SystemClock
    from registrar.store.db import MIGRATIONS
    from registrar.store.inventory import Inventory
    path = tmp_path / "registrar.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(MIGRATIONS[0])
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (1)")
    old.execute("INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name,"
                " first_seen, last_seen) VALUES ('t1', 'join_token', 'spiffe://x/a', 'g', 1, 1)")
    for serial, issued_at in (("aa", 10.0), ("cc", 30.0), ("bb", 20.0)):
        old.execute("INSERT INTO certs VALUES (?, 1, 'spiffe://x/a', ?, 9e9)",
                    (serial, issued_at))
    old.close()
    inventory = Inventory(connect(path), SystemClock())
    standings = {s: owner.standing for s in ("aa", "bb", "cc")
                 if (owner := inventory.owner(s)) is not None}
    assert standings == {"aa": "superseded", "bb": "superseded", "cc": "current"}
