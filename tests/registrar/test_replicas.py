"""Replicas: two ``mesh-registrar serve`` processes on one PostgreSQL, sharing the
CA read-only, each on its own port (as behind a TCP load balancer). Every
single-use decision is the database's, so it holds across them: a join token
raced at both is spent once, an EC2 instance's first use is claimed once, and a
challenge issued by one is redeemed once at the other.

PostgreSQL only: SQLite is one host's file (its workers share it; see
test_atomic_spend.py and tests/cloud/test_aws_ledger.py for them)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloud.test_e2e import evidence_options
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import calls
from tests.registrar.csrs import csr_pem, ec_key

RACE = 50


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CloudPki:
    return CloudPki.create(tmp_path_factory.mktemp("cloud-pki"))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer,
             pki: CloudPki) -> Iterator[tuple[RegistrarProcess, RegistrarProcess]]:
    base = tmp_path_factory.mktemp("replicas")
    with serving(FakeGce(pki).app()) as google:
        jwks = google + "/oauth2/v3/certs"
        evidence = {"join_token": {}, **{c: evidence_options(c, pki, jwks)
                                         for c in ("gce", "aws")}}
        a = RegistrarProcess(base / "a", groups={"web": ("prod", "web-vm", 600)},
                             store={"type": "postgres", "dsn": postgres_server.new_database()},
                             config={"evidence": evidence})
        (base / "a").mkdir()
        b = a.replica(base / "b")
        try:
            a.start()
            b.start()
            assert a.port != b.port and a.state_dir == b.state_dir
            yield a, b
        finally:
            a.kill()
            b.kill()


def _all_at_once(requests: list[Callable[[], tuple[int, Any]]]) -> list[tuple[int, Any]]:
    """Each request on its own thread and TLS connection, released together."""
    results: list[tuple[int, Any]] = [(0, None)] * len(requests)
    gate = threading.Barrier(len(requests))

    def run(i: int) -> None:
        gate.wait()
        results[i] = requests[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def _post(reg: RegistrarProcess, body: dict[str, Any]) -> Callable[[], tuple[int, Any]]:
    def send() -> tuple[int, Any]:
        with calls.client(reg) as c:
            return calls.post(c, "/v1/attest", json=body)
    return send


def test_a_join_token_raced_at_both_replicas_is_spent_once(
        replicas: tuple[RegistrarProcess, RegistrarProcess]) -> None:
    """The same token sent 50 times at once, half to each replica, each with its own
    key: one certificate. The same 50 with one key (a retried request): every answer
    is that one certificate."""
    a, b = replicas
    rounds = 3
    for _ in range(rounds - 1):
        token = a.create_token("web")
        bodies = [calls.attest_body(token, csr_pem(ec_key()), hostname="vm")
                  for _ in range(RACE)]
        results = _all_at_once([_post(a if i % 2 else b, bodies[i]) for i in range(RACE)])
        statuses = [status for status, _ in results]
        assert statuses.count(200) == 1, results
        assert {r["reason"] for s, r in results if s != 200} == {"token_spent"}, results
    body = calls.attest_body(a.create_token("web"), csr_pem(ec_key()), hostname="vm")
    results = _all_at_once([_post(a if i % 2 else b, body) for i in range(RACE)])
    assert [status for status, _ in results] == [200] * RACE, results
    assert len({r["cert_chain"] for _, r in results}) == 1
    assert b.sql("SELECT count(*) FROM certs") == [(rounds,)]
    rows = json.loads(b.cli("workloads", "list", "--json").stdout)
    assert len([r for r in rows if r["evidence_type"] == "join_token"]) == rounds
    tokens = json.loads(b.cli("token", "list", "--json").stdout)
    assert [t["state"] for t in tokens] == ["spent"] * rounds


def test_an_ec2_first_use_raced_at_both_replicas_is_claimed_once(
        replicas: tuple[RegistrarProcess, RegistrarProcess], pki: CloudPki) -> None:
    """Each request with its own key: one wins. The same document and key (a retried
    request): every answer is that one certificate."""
    a, b = replicas
    for i in range(11):
        doc = pki.aws_document(instance_id=f"i-0{i:015x}")
        evidence = {"type": "aws", "document": base64.b64encode(doc).decode(),
                    "pkcs7": pki.aws_pkcs7(doc)}
        if i < 10:
            bodies = [{"evidence": evidence, "csr": csr_pem(ec_key())} for _ in range(4)]
            results = _all_at_once([_post(a if j % 2 else b, bodies[j]) for j in range(4)])
            assert sorted(status for status, _ in results) == [200, 403, 403, 403], results
            assert {r["reason"] for s, r in results if s == 403} == {
                "instance_already_attested"}
        else:
            body = {"evidence": evidence, "csr": csr_pem(ec_key())}
            results = _all_at_once([_post(a, body), _post(b, body)] * 5)
            assert [status for status, _ in results] == [200] * 10, results
            assert len({r["cert_chain"] for _, r in results}) == 1
    rows = json.loads(a.cli("workloads", "list", "--json").stdout)
    aws = [r for r in rows if r["evidence_type"] == "aws"]
    assert len(aws) == 11 and all(r["state"] == "active" for r in aws)
    assert a.sql("SELECT count(*) FROM certs c JOIN workloads w ON w.id = c.workload_id"
                 " WHERE w.evidence_type = 'aws'") == [(11,)]


def test_a_challenge_from_one_replica_is_redeemed_once_at_the_other(
        replicas: tuple[RegistrarProcess, RegistrarProcess], pki: CloudPki) -> None:
    a, b = replicas
    with calls.client(a) as ca, calls.client(b) as cb:
        status, body = calls.post(ca, "/v1/challenge", json={})
        assert status == 200, body
        nonce = body["nonce"]
        evidence = {"type": "gce", "token": pki.gce_token(nonce)}
        attest = {"evidence": evidence, "csr": csr_pem(ec_key()), "challenge": nonce}
        status, body = calls.post(cb, "/v1/attest", json=attest)
        assert status == 200, body
        for c in (cb, ca):  # spent for both
            status, body = calls.post(c, "/v1/attest", json=dict(attest, csr=csr_pem(ec_key())))
            assert (status, body["reason"]) == (401, "challenge_invalid")
        # The token itself is remembered by both: with a fresh challenge from B it is a
        # replay (its audience names the spent challenge, so it fails that check first).
        status, body = calls.post(cb, "/v1/challenge", json={})
        fresh = body["nonce"]
        status, body = calls.post(ca, "/v1/attest", json=dict(attest, challenge=fresh))
        assert status == 401 and body["reason"] in ("evidence_audience_invalid",
                                                    "evidence_replayed"), body


def test_both_replicas_say_which_store_they_use(
        replicas: tuple[RegistrarProcess, RegistrarProcess]) -> None:
    for reg in replicas:
        with calls.client(reg) as c:
            assert calls.get(c, "/healthz") == (200, {"status": "ok", "store": "postgres"})
            assert calls.get(c, "/ready") == (200, {"status": "ready", "store": "postgres"})
        assert "store: postgres schema" in reg.log_text()


def test_replicas_with_workers_serve_from_a_read_only_state_directory(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    """The state directory may be one read-only mount shared by every replica: a
    replica with 2 workers (their shared /metrics counters) and the OIDC issuer
    starts and serves with it mounted read only in its own mount namespace, and
    neither replica's start writes into it (once the first replica made the OIDC
    key). Both used to write there: ``metrics/`` was emptied and recreated by
    every start (replicas reset each other's counters), and the OIDC key check
    took a lock file."""
    a = RegistrarProcess(tmp_path / "a", groups={"web": ("prod", "web-vm", 600)},
                         store={"type": "postgres", "dsn": postgres_server.new_database()},
                         workers=2, config={"oidc": {"issuer": "https://127.0.0.1:1"}})
    (tmp_path / "a").mkdir()
    a.start()
    try:
        state = a.state_dir
        before = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
        # Its own mount namespace: the bind mount is seen by this replica only.
        ro = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind -o ro "$0" "$0" && exec "$@"', str(state)]
        b = a.replica(tmp_path / "b")
        b.prefix = ro
        b.start(timeout=60)
        try:
            for reg in (a, b):
                body = calls.attest_body(a.create_token("web"), csr_pem(ec_key()))
                with calls.client(reg) as c:
                    status, answer = calls.post(c, "/v1/attest", json=body)
                    assert status == 200, answer
            # b's /metrics counts b's own attest only (its workers share a table of
            # their own, which a worker adds to about once a second), whichever
            # worker answers the scrape.
            line = re.compile(r'^registrar_requests_total\{operation="attest",.*'
                              r'result="ok"\} (\S+)$', re.M)
            deadline = time.monotonic() + 15
            seen: list[str] = []
            while time.monotonic() < deadline:
                with calls.client(b) as c:
                    response = c.get("/metrics")
                assert response.status_code == 200
                seen = line.findall(response.text)
                if seen:
                    break
                time.sleep(0.5)
            assert seen == ["1.0"], seen
            time.sleep(2)  # both workers flushed: a second scrape, maybe the other one's
            with calls.client(b) as c:
                assert line.findall(c.get("/metrics").text) == ["1.0"]
        finally:
            b.kill()
        after = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
        assert after == before
        assert not (state / "metrics").exists()
    finally:
        a.kill()
