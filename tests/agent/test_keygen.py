"""The key helper process (agent/identity/keygen.py): a real child of the same
Python. Its failures come back as KeygenError with a reason (retried by the
rotation policy), never as a crash, and a stopping agent leaves no helper."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.identity import keygen
from agent.identity.keygen import KeygenError, key_and_csr
from agent.rotation.retry import retryable


def test_a_key_that_is_not_a_key_is_named_as_such() -> None:
    with pytest.raises(KeygenError) as err:
        asyncio.run(key_and_csr("ecdsa-p256", "vm", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"))
    assert err.value.reason == "not_a_key"


def test_a_helper_that_dies_is_a_retryable_keygen_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keygen, "_CHILD", "import sys; sys.exit('helper broke: out of luck')")
    with pytest.raises(KeygenError) as err:
        asyncio.run(key_and_csr("ecdsa-p256", "vm"))
    assert err.value.reason == "keygen_failed"
    assert "exited 1: helper broke: out of luck" in str(err.value)
    assert retryable(err.value)


def test_a_stopping_agent_leaves_no_helper_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = uuid.uuid4().hex
    monkeypatch.setattr(keygen, "_CHILD", f"import time; time.sleep(60)  # {marker}")

    async def cancelled() -> None:
        task = asyncio.create_task(key_and_csr("ecdsa-p256", "vm"))
        await _until(lambda: _running(marker), "the helper never started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    for _ in range(50):
        if not _running(marker):
            return
        asyncio.run(asyncio.sleep(0.1))
    pytest.fail("the helper outlived its cancelled caller")


def _running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


@pytest.fixture(autouse=True)
def _no_spare_left() -> object:
    """A spare belongs to the event loop that started it: none outlives its test."""
    yield
    keygen._spare = None


def _real_child(marker: str) -> str:
    """The real helper, recognisable by ``marker`` on its command line."""
    return f"{keygen._CHILD}  # {marker}"


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(100):  # up to 10 s on a loaded machine
        if check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(what)


def test_a_helper_started_ahead_makes_the_next_key(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    spare = uuid.uuid4().hex
    started_late = tmp_path / "a second helper started"

    async def run() -> tuple[bytes, bytes]:
        monkeypatch.setattr(keygen, "_CHILD", _real_child(spare))
        assert await keygen.prestart()
        await _until(lambda: _running(spare), "the spare helper never started")
        # Any helper started from now on leaves a file behind.
        monkeypatch.setattr(keygen, "_CHILD", f"open({str(started_late)!r}, 'w').close(); "
                                              + _real_child(uuid.uuid4().hex))
        return await key_and_csr("ecdsa-p256", "vm-1")

    key_pem, csr_pem = asyncio.run(run())
    assert not started_late.exists(), "the key came from a new helper, not the spare"
    assert not _running(spare)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key() == serialization.load_pem_private_key(key_pem, None).public_key()


def test_a_spare_no_one_took_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    spare = uuid.uuid4().hex
    monkeypatch.setattr(keygen, "_CHILD", _real_child(spare))

    async def run() -> None:
        assert await keygen.prestart()
        await _until(lambda: _running(spare), "the spare helper never started")
        # A helper waiting on its stdin never ends by itself: only a kill ends it.
        await asyncio.wait_for(keygen.discard_spare(), 10)

    asyncio.run(run())
    assert not _running(spare)


def test_a_spare_that_died_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    spare = uuid.uuid4().hex
    monkeypatch.setattr(keygen, "_CHILD", _real_child(spare))

    async def run() -> tuple[bytes, bytes]:
        assert await keygen.prestart()
        await _until(lambda: _running(spare), "the spare helper never started")
        subprocess.run(["pkill", "-9", "-f", spare], check=True)
        await _until(lambda: keygen._spare is not None and keygen._spare.returncode is not None,
                     "the dead spare was never reaped")
        return await key_and_csr("ecdsa-p256", "vm-1")

    _, csr_pem = asyncio.run(run())
    assert x509.load_pem_x509_csr(csr_pem).is_signature_valid
