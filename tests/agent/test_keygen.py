"""The key helper process (agent/identity/keygen.py): a real child of the same
Python. Its failures come back as KeygenError with a reason (retried by the
rotation policy), never as a crash, and a stopping agent leaves no helper."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

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
        for _ in range(100):  # up to 10 s for the helper to start on a loaded machine
            await asyncio.sleep(0.1)
            if _running(marker):
                break
        else:
            pytest.fail("the helper never started")
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
