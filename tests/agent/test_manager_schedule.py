"""The identity manager's timing on virtual time against a real registrar over
real TLS: when it renews, how it backs off through an outage, and when it
gives up. The registrar judges certificates by the real clock, so the
virtual clock starts at the real time; nothing here waits for a schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from agent.attest.base import Attestor
from agent.attest.token import TokenAttestor
from agent.credentials import Credentials, CredentialStore
from agent.identity.attest_key import FILE_NAME as ATTEST_KEY_FILE
from agent.identity.manager import CannotContinue, IdentityManager, Tuning
from agent.registrar_client import RegistrarClient
from agent.rotation.schedule import renewal_time
from agent.state.store import StateFile
from agent.status.health import Health
from meshcore.exits import EX_NO_IDENTITY
from tests.fakes.clock import FakeClock, FixedRng

TUNING = Tuning(key_type="ecdsa-p256", renew_at=0.5, jitter=0.1, min_backoff=1.0,
                max_backoff=120.0)


class Rotated(Exception):
    """Ends ``run()`` after the first renewal."""


def make_manager(reg: Any, tmp_path: Path, clock: FakeClock, rng: FixedRng,
                 health: Health) -> IdentityManager:
    token_file = tmp_path / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, reg.create_token("web", ttl="10m").encode())
    os.close(fd)
    attestor = TokenAttestor(token_file)

    async def choose() -> Attestor:
        return attestor

    return IdentityManager(
        store=CredentialStore(tmp_path / "credentials"),
        state_file=StateFile(tmp_path / "state.json"),
        client=RegistrarClient(reg.url, reg.ca_file, timeout=5.0), choose_attestor=choose,
        clock=clock, rng=rng, health=health, tuning=TUNING,
        host=lambda: ("vm-1", ["192.0.2.10"]))


def expected_renewal(manager: IdentityManager, creds: Credentials, sample: float) -> dt.datetime:
    hint = manager.state.renew_after
    return renewal_time(creds.not_before, creds.not_after, ratio=TUNING.renew_at,
                        jitter=TUNING.jitter, sample=sample,
                        hint=dt.datetime.fromisoformat(hint) if hint else None)


def test_renews_at_the_jittered_point_without_waiting_for_it(
        registrar_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    clock = FakeClock(start=dt.datetime.now(dt.UTC))
    rng = FixedRng(0.75)  # sample = uniform(-1, 1) = +0.5: 5 % past the half-life
    health = Health()
    manager = make_manager(reg, tmp_path, clock, rng, health)

    async def scenario() -> tuple[Credentials, Credentials, float]:
        first = await manager.start()
        due = (expected_renewal(manager, first, 0.5) - clock.now()).total_seconds()
        renewed: list[Credentials] = []

        async def stop_after_one(creds: Credentials) -> None:
            renewed.append(creds)
            raise Rotated

        manager.on_rotated.append(stop_after_one)
        with pytest.raises(Rotated):
            await manager.run()
        return first, renewed[0], due

    first, second, due = asyncio.run(scenario())
    lifetime = (first.not_after - first.not_before).total_seconds()
    assert clock.sleeps == [pytest.approx(due)]
    assert 0.5 * lifetime < due <= 0.55 * lifetime  # jittered past the half-life, not later
    assert second.serial_hex != first.serial_hex and second.generation > first.generation
    assert health.current.rotations == 1 and health.current.phase == "ready"
    assert "renew ok" in reg.log_text()


def test_an_outage_backs_off_until_expiry_then_exits_79_with_recovery_advice(
        registrar_factory: Any, tmp_path: Path) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    clock = FakeClock(start=dt.datetime.now(dt.UTC))
    rng = FixedRng(0.5)  # renewal sample 0; backoff jitter half of min_backoff
    health = Health()
    manager = make_manager(reg, tmp_path, clock, rng, health)

    async def scenario() -> tuple[Credentials, CannotContinue]:
        creds = await manager.start()
        reg.stop()
        with pytest.raises(CannotContinue) as caught:
            await manager.run()
        return creds, caught.value

    creds, stopped = asyncio.run(scenario())
    backoffs = clock.sleeps[1:]
    # Doubling from min_backoff plus the pinned jitter, capped at max_backoff...
    assert backoffs[:8] == [1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5, 120.0]
    assert set(backoffs[8:-1]) == {120.0}
    # ...and bounded by the certificate's expiry, which is where it gives up.
    assert 0 <= backoffs[-1] <= 120.0
    assert abs((clock.now() - creds.not_after).total_seconds()) < 0.01
    assert stopped.exit_code == EX_NO_IDENTITY
    assert ("mesh-registrar token create --config /etc/mesh-registrar/registrar.yaml "
            "--group NAME") in str(stopped)
    snap = health.current
    assert snap.phase == "expired" and snap.failures["unreachable"] == len(backoffs) + 1


def test_a_start_with_stored_credentials_removes_the_key_they_certify(
        registrar_factory: Any, tmp_path: Path) -> None:
    """An agent stopped after storing its certificate, before removing the kept
    attestation key: the next start finds the file beside a certificate for that key
    and removes it, so a later attestation makes a key of its own."""
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    clock = FakeClock(start=dt.datetime.now(dt.UTC))
    first = asyncio.run(make_manager(reg, tmp_path, clock, FixedRng(0.5), Health()).start())
    leftover = tmp_path / ATTEST_KEY_FILE
    assert not leftover.exists()  # removed once the certificate was stored
    leftover.write_bytes(first.key_pem)
    leftover.chmod(0o600)
    again = asyncio.run(make_manager(reg, tmp_path, clock, FixedRng(0.5), Health()).start())
    assert again.leaf.serial_number == first.leaf.serial_number  # stored, not attested
    assert not leftover.exists()
