"""Registrar outages: short ones are ridden out on the old certificate, long
ones end in not-ready and the documented exit (79) with recovery advice."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from agent.credentials import CredentialStore


def test_short_outage_keeps_the_old_cert_and_renews_soon_after(
        registrar_factory: Any, agent_factory: Any) -> None:
    # 20 s TTL -> 30 s lifetime, renewal due ~5 s after issue.
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 20)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          extra={"rotation": {"max_backoff": "2s", "jitter": 0.0}})
    agent.start()
    agent.wait_ready()
    pid = agent.proc.pid
    first = agent.status()
    reg.stop()
    time.sleep(8)  # past the renewal point: renewals fail meanwhile
    during = agent.status()
    assert during["serial"] == first["serial"]
    assert during["ready"] is True, "a valid cert keeps the agent ready during an outage"
    assert sum(during["failures"].values()) >= 1
    reg.start()
    back = time.monotonic()
    while agent.status()["serial"] == first["serial"] and time.monotonic() - back < 10:
        time.sleep(0.05)
    recovered_after = time.monotonic() - back
    assert agent.status()["serial"] != first["serial"]
    # One max-backoff interval (2 s) plus the retry-after jitter and a request.
    assert recovered_after < 2 + 1 + 1.5, recovered_after
    assert agent.proc.pid == pid and agent.proc.poll() is None
    assert agent.stop() == 0


def test_outage_past_expiry_goes_unready_and_exits_79(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    reg.stop()
    creds = CredentialStore(agent.credentials).current()
    assert creds is not None
    not_after = creds.not_after
    while agent.proc.poll() is None:
        if dt.datetime.now(dt.UTC) < not_after:
            # Ready right up to expiry (the outage alone does not make it unready).
            assert agent.ready() or dt.datetime.now(dt.UTC) >= not_after
        time.sleep(0.02)
    assert agent.proc.returncode == 79, agent.log_text()[-2000:]
    assert dt.datetime.now(dt.UTC) >= not_after
    log = agent.log_text()
    assert "To recover" in log
    assert "mesh-registrar token create --config /etc/mesh-registrar/registrar.yaml" in log
    # The expired credentials are left in place for the operator, intact.
    assert "certificate expired while the registrar was unreachable" in log
    left = CredentialStore(agent.credentials).current()
    assert left is not None and left.generation == creds.generation


def test_expired_on_start_with_cloudless_no_token_exits_79_without_touching_disk(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 2)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.start()
    agent.wait_ready()
    agent.kill()
    time.sleep(2.5)
    before = {p.name: p.read_bytes() for p in (agent.credentials / "current").iterdir()}
    reg.stop()
    agent.start()
    assert agent.wait_exit(30) == 79
    after = {p.name: p.read_bytes() for p in (agent.credentials / "current").iterdir()}
    assert before == after
