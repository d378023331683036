"""CA rotation: the phase state machine (pure), and each step's files and decisions
with a real CA, real stores and the real decision layer, in one process."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from registrar.api.service import Service
from registrar.attestation.base import Verified
from registrar.ca import rotation as steps
from registrar.ca.bootstrap import init_state
from registrar.ca.live import LiveCa
from registrar.ca.versions import Rotation, RotationRefused, Version, load, version_dir
from registrar.config import RegistrarConfig, build_config
from registrar.store.challenges import ChallengeStore
from registrar.store.db import MIGRATIONS, connect
from registrar.store.inventory import Inventory
from tests.fakes.clock import FakeClock
from tests.registrar.csrs import csr_pem, ec_key

TD = "example.org"


def _v(name: str, root: str) -> Version:
    return Version(name=name, root=root, intermediate=name + "-i", kind="generated",
                   created_at=0.0)


def _idle() -> Rotation:
    return Rotation(phase="idle", active="v1", bundle_version=1, versions=(_v("v1", "R1"),))


# -- the state machine (pure) ------------------------------------------------------------
def test_a_full_root_rotation_walks_idle_prepared_activated_idle() -> None:
    r = _idle()
    assert r.bundle_roots() == ("R1",)
    r = r.prepared(_v("v2", "R2"), now=10)
    assert (r.phase, r.active, r.next, r.bundle_version) == ("prepared", "v1", "v2", 2)
    assert r.bundle_roots() == ("R1", "R2")  # the new root is trusted before it signs
    r = r.activated(now=20)
    assert (r.phase, r.active, r.previous, r.bundle_version) == ("activated", "v2", "v1", 2)
    assert r.bundle_roots() == ("R2", "R1")  # the old root stays for its certificates
    r = r.retired(now=30)
    assert (r.phase, r.active, r.previous, r.bundle_version) == ("idle", "v2", None, 3)
    assert r.bundle_roots() == ("R2",)
    assert [h.split(" ", 1)[1] for h in r.history] == ["prepare v2", "activate v2",
                                                        "retire v1"]


@pytest.mark.parametrize("phase,allowed", [
    ("idle", {"prepare", "intermediate"}),
    ("prepared", {"activate"}),
    ("activated", {"retire"}),
])
def test_each_step_runs_only_in_its_phase(phase: str, allowed: set[str]) -> None:
    r = _idle()
    if phase != "idle":
        r = r.prepared(_v("v2", "R2"), 1)
    if phase == "activated":
        r = r.activated(2)
    attempts = {
        "prepare": lambda: r.prepared(_v("v9", "R9"), 3),
        "activate": lambda: r.activated(3),
        "retire": lambda: r.retired(3),
        "intermediate": lambda: r.intermediate_rotated(_v("v9", r.version(r.active).root), 3),
    }
    for step, attempt in attempts.items():
        if step in allowed:
            attempt()
            continue
        with pytest.raises(RotationRefused) as refused:
            attempt()
        assert refused.value.reason == "wrong_phase"
        assert f"phase {phase!r}" in refused.value.message


def test_an_intermediate_rotation_keeps_the_bundle_and_its_version() -> None:
    r = _idle().intermediate_rotated(_v("v2", "R1"), now=5)
    assert (r.phase, r.active, r.bundle_version, r.bundle_roots()) == ("idle", "v2", 1, ("R1",))
    with pytest.raises(ValueError):
        _idle().intermediate_rotated(_v("v2", "R2"), now=5)


# -- the files and the decisions ---------------------------------------------------------
class Anyone:
    evidence_type = "fake"
    needs_challenge = False

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        return Verified(evidence_type="fake", subject=str(evidence["vm"]), group="example")


class World:
    def __init__(self, tmp: Path, start: float = 1_900_000_000.0,
                 conn: Any = None) -> None:
        """``conn``: the store (tests/registrar/conftest.py ``store_db``: each of
        the two); default the SQLite file in the state directory."""
        result = init_state(tmp / "s", TD, ["localhost", "127.0.0.1"])
        self.config: RegistrarConfig = build_config(result.config_path)
        self.clock = FakeClock(start=start)
        conn = conn if conn is not None else connect(self.config.database)
        self.conn = conn
        self.inventory = Inventory(conn, self.clock)
        self.live = LiveCa(self.config, self.clock)
        self.service = Service(config=self.config, authority=self.live,
                               verifiers={"fake": Anyone()},
                               challenges=ChallengeStore(conn, 60, self.clock),
                               inventory=self.inventory, clock=self.clock.now)

    def step(self) -> None:
        self.clock.advance(2)  # past LiveCa's once-a-second check

    def attest(self, vm: str) -> dict[str, Any]:
        decision = asyncio.run(self.service.attest(
            {"evidence": {"type": "fake", "vm": vm}, "csr": csr_pem(ec_key())}, "-"))
        return decision.body

    def renew(self, body: Mapping[str, Any]) -> dict[str, Any]:
        leaf = x509.load_pem_x509_certificates(body["cert_chain"].encode())[0]
        decision = asyncio.run(self.service.renew(
            {"csr": csr_pem(ec_key())}, leaf, "-"))
        return decision.body

    def now(self) -> float:
        return self.clock.now().timestamp()

    def holders(self, versions: frozenset[str]) -> list[str]:
        return [w.subject for w in self.inventory.holders_of(versions)]


def chains_to(body: Mapping[str, Any], roots_pem: bytes, tmp: Path,
              at: float = 1_900_000_001) -> bool:
    """``openssl verify -x509_strict`` of the issued chain against ``roots_pem``."""
    (tmp / "roots.pem").write_bytes(roots_pem)
    (tmp / "chain.pem").write_text(body["cert_chain"])
    out = subprocess.run(["openssl", "verify", "-x509_strict", "-attime",
                          str(int(at)), "-CAfile", str(tmp / "roots.pem"),
                          "-untrusted", str(tmp / "chain.pem"), str(tmp / "chain.pem")],
                         capture_output=True, text=True, check=False)
    return out.returncode == 0


def test_prepare_activate_retire_with_real_certificates(
        tmp_path: Path, store_db: Any) -> None:
    w = World(tmp_path, conn=store_db)
    state = w.config.state_dir
    old_root = w.config.ca.roots.read_bytes()
    first = w.attest("vm-a")
    assert first["trust_bundle_version"] == 1 and first["trust_bundle"].encode() == old_root

    rotation, _ = steps.prepare(w.config, w.now())
    w.step()
    new_root = (version_dir(state, "v2") / "root-cert.pem").read_bytes()
    for name in ("ca-key.pem", "root-key.pem"):
        assert (version_dir(state, "v2") / name).stat().st_mode & 0o777 == 0o600
    renewed = w.renew(first)
    # Prepared: the old CA still signs, and every answer carries both roots.
    assert renewed["trust_bundle_version"] == 2
    assert renewed["trust_bundle"].encode() == old_root + new_root
    assert chains_to(renewed, old_root, tmp_path) and not chains_to(renewed, new_root, tmp_path)
    assert w.config.ca.roots.read_bytes() == old_root + new_root

    steps.activate(w.config, w.now())
    w.step()
    assert w.live.authority().version == "v2"
    server = x509.load_pem_x509_certificates(w.config.tls_cert.read_bytes())
    assert server[1].subject.rfc4514_string().endswith(f"registrar intermediate v2,O={TD}")
    # The workload still holds a v1 certificate: retiring now would cut it off.
    with pytest.raises(RotationRefused) as early:
        steps.retire(w.config, w.now(), w.holders)
    assert early.value.reason == "live_certificates" and early.value.workloads == ("vm-a",)
    assert load(state) is not None and load(state).phase == "activated"  # type: ignore[union-attr]

    again = w.renew(renewed)
    assert chains_to(again, new_root, tmp_path) and not chains_to(again, old_root, tmp_path)
    rotation = steps.retire(w.config, w.now(), w.holders)
    w.step()
    assert (rotation.phase, rotation.bundle_version) == ("idle", 3)
    assert w.config.ca.roots.read_bytes() == new_root
    latest = w.renew(again)
    assert latest["trust_bundle"].encode() == new_root and latest["trust_bundle_version"] == 3


def test_an_expired_or_revoked_holder_does_not_block_retire(
        tmp_path: Path, store_db: Any) -> None:
    w = World(tmp_path, conn=store_db)
    w.attest("vm-gone")
    revoked = w.attest("vm-revoked")
    steps.prepare(w.config, w.now())
    steps.activate(w.config, w.now())
    assert sorted(w.holders(frozenset({"", "v1"}))) == ["vm-gone", "vm-revoked"]
    workload = next(x for x in w.inventory.list() if x.subject == "vm-revoked")
    w.inventory.set_state(workload.id, "revoked")
    assert w.holders(frozenset({"", "v1"})) == ["vm-gone"]
    # Issued before the first rotation step (no CA version recorded): the initial CA's.
    with pytest.raises(RotationRefused) as refused:
        steps.retire(w.config, w.now(), w.holders)
    assert refused.value.workloads == ("vm-gone",)
    w.clock.advance(86400 * 2)  # past the group's 24 h certificates
    steps.retire(w.config, w.now(), w.holders)
    assert revoked  # (issued before the rotation)


def test_intermediate_only_rotation_signs_at_once_and_keeps_the_roots(
        tmp_path: Path, store_db: Any) -> None:
    w = World(tmp_path, conn=store_db)
    roots = w.config.ca.roots.read_bytes()
    rotation = steps.rotate_intermediate(w.config, w.now())
    w.step()
    body = w.attest("vm-a")
    assert rotation.active == "v2" and body["trust_bundle_version"] == 1
    assert w.config.ca.roots.read_bytes() == roots
    assert chains_to(body, roots, tmp_path)
    intermediate = x509.load_pem_x509_certificates(body["cert_chain"].encode())[1]
    assert intermediate.subject.rfc4514_string().endswith("intermediate v2,O=example.org")


def test_intermediate_only_needs_the_root_key(
        tmp_path: Path, store_db: Any) -> None:
    w = World(tmp_path, conn=store_db)
    (w.config.state_dir / "root-key.pem").unlink()  # moved offline, as init advises
    with pytest.raises(RotationRefused) as refused:
        steps.rotate_intermediate(w.config, w.now())
    assert refused.value.reason == "root_key_missing"


def test_a_registrar_sees_the_rotation_without_a_restart_and_skips_a_torn_one(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    steps.prepare(w.config, w.now())
    # No clock step: the first answer after the command returned carries its bundle
    # (a workload attesting then holds the new root, as `activate` requires).
    assert w.live.authority().bundle_version == 2
    # A server key written but its certificate not yet: keep the last good state,
    # and try again at most once a second (not on every request).
    steps.activate(w.config, w.now())
    w.config.tls_key.write_bytes(b"not a key")
    assert w.live.authority().version == "v1"
    steps.current(w.config, w.now())
    from registrar.ca.servercert import reissue_server_certificate
    reissue_server_certificate(w.config, version_dir(w.config.state_dir, "v2"))
    assert w.live.authority().version == "v1"  # the failed load's second not over
    w.step()
    assert w.live.authority().version == "v2"


def test_schema_3_inventories_migrate_with_the_initial_ca(tmp_path: Path) -> None:
    """Certificates issued before versions were recorded belong to the initial CA."""
    path = tmp_path / "registrar.db"
    old = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:3]:
        old.executescript(script)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_version VALUES (3)")
    old.execute("INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name,"
                " first_seen, last_seen, current_serial) VALUES ('t1', 'join_token',"
                " 'spiffe://x/a', 'g', 1, 1, 'aa')")
    old.execute("INSERT INTO certs VALUES ('aa', 1, 'spiffe://x/a', 10, 9e9)")
    old.close()
    inventory = Inventory(connect(path), FakeClock(start=100.0))
    assert [w.subject for w in inventory.holders_of(frozenset({""}))] == ["t1"]
    assert inventory.ca_versions_in_use() == {"": 1}
    assert [w.subject for w in inventory.missing_bundle(1)] == ["t1"]


def test_prepare_imports_an_istio_plugin_ca_with_the_strict_checks_of_init(
        tmp_path: Path, store_db: Any) -> None:
    from tests.registrar.test_strict_x509 import plugin_ca
    # the plug-in CA lives a year from now
    w = World(tmp_path, conn=store_db, start=time.time())
    plugin_ca(tmp_path / "lenient", intermediate_ski=False)
    with pytest.raises(RotationRefused) as refused:
        steps.prepare(w.config, w.now(), import_dir=tmp_path / "lenient")
    assert refused.value.reason == "import_refused"
    assert "no Subject Key Identifier" in refused.value.message
    assert load(w.config.state_dir) is None  # nothing recorded

    plugin_ca(tmp_path / "cacerts")
    rotation, _ = steps.prepare(w.config, w.now(), import_dir=tmp_path / "cacerts")
    assert rotation.version("v2").kind == "imported"
    assert not (version_dir(w.config.state_dir, "v2") / "root-key.pem").exists()
    assert (version_dir(w.config.state_dir, "v2") / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    steps.activate(w.config, w.now())
    w.step()
    imported_root = (tmp_path / "cacerts" / "root-cert.pem").read_bytes()
    assert chains_to(w.attest("vm-a"), imported_root, tmp_path, at=w.now() + 1)
    with pytest.raises(RotationRefused) as again:
        steps.prepare(w.config, w.now(), import_dir=tmp_path / "cacerts")
    assert again.value.reason == "wrong_phase"
