"""Rotation with short-lived certificates: many rotations, every observation of
``current`` is a matching, valid pair, and kill -9 at random moments never
breaks that. Key material never reaches a log."""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.credentials import CredentialStore
from agent.identity.keys import load_key, matches

# A 12 s TTL is below the registrar's floor for its default 10 s backdate, so the
# test fixture sets cert_backdate to TTL / 6 = 2 s: a 14 s lifetime renewed about
# 5 s after issue (the hint): quick rotations without a busy loop.
SHORT_TTL = 12


def read_pair(creds_dir: Path) -> tuple[bytes, x509.Certificate] | None:
    """Read like a consumer would: resolve ``current`` once, then read files from
    that generation. A generation pruned under us is retried, never half-read."""
    try:
        generation = creds_dir / os.readlink(creds_dir / "current")
        key_pem = (generation / "key.pem").read_bytes()
        chain = x509.load_pem_x509_certificates((generation / "cert-chain.pem").read_bytes())
    except FileNotFoundError:
        return None
    return key_pem, chain[0]


class Observer(threading.Thread):
    def __init__(self, creds_dir: Path) -> None:
        super().__init__(daemon=True)
        self.creds_dir = creds_dir
        self.stop = threading.Event()
        self.observations = 0
        self.mismatches: list[str] = []
        self.serials: set[int] = set()
        self.keys: set[bytes] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            pair = read_pair(self.creds_dir) if (self.creds_dir / "current").exists() else None
            if pair is not None:
                key_pem, leaf = pair
                self.observations += 1
                self.keys.add(key_pem)
                self.serials.add(leaf.serial_number)
                if not matches(load_key(key_pem), leaf):
                    self.mismatches.append(format(leaf.serial_number, "x"))
            time.sleep(0.002)


def key_lines(keys: set[bytes]) -> set[str]:
    return {line for pem in keys for line in pem.decode().splitlines()
            if line and not line.startswith("-----")}


def test_short_ttl_rotates_and_current_is_always_a_matching_pair(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", SHORT_TTL)})
    token = reg.create_token("web", ttl="10m")
    agent = agent_factory(reg, token=token)
    agent.start()
    agent.wait_ready()
    observer = Observer(agent.credentials)
    observer.start()
    deadline = time.monotonic() + 60
    while agent.status()["rotations"] < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    observer.stop.set()
    observer.join()
    status = agent.status()
    assert status["rotations"] >= 6, agent.log_text()[-3000:]
    assert observer.mismatches == []
    assert len(observer.serials) >= 5 and observer.observations > 100
    code, metrics = agent.get("/metrics")
    assert code == 200
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line and not line.startswith("#")}
    assert values["mesh_agent_rotations_total"] >= 6
    assert 0 < values["mesh_agent_cert_expiry_seconds"] <= SHORT_TTL
    assert values["mesh_agent_ready"] == 1.0
    # Six keys and CSRs later the daemon still has not loaded cryptography (about
    # 10 MiB resident): each was made by a short-lived helper process.
    assert agent.proc is not None
    maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
    assert "_ssl." in maps  # the agent's own process: its TLS is the standard library's
    assert "cryptography" not in maps
    assert agent.stop() == 0
    logs = agent.log_text() + reg.log_text()
    assert token not in logs
    leaked = [line for line in key_lines(observer.keys) if line in logs]
    assert leaked == []


def test_kill_9_at_random_moments_across_50_rotations(
        registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", SHORT_TTL)})
    # Renewal due at once on every start (10 % of a 14 s lifetime is already past):
    # the registrar's hint, (TTL - backdate) / 2 = 5 s, would let most runs end first.
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          extra={"log_level": "info", "rotation": {"renew_at": 0.1}})
    rng = random.Random(7)
    kills = 0
    generation = 0
    deadline = time.monotonic() + 240
    while generation < 51 and time.monotonic() < deadline:
        agent.start()
        time.sleep(rng.uniform(0.3, 2.5))
        agent.kill()
        kills += 1
        store = CredentialStore(agent.credentials)
        store.prepare()
        creds = store.current()
        if creds is None:
            continue  # killed before the first bootstrap finished
        assert matches(load_key(creds.key_pem), x509.load_der_x509_certificate(creds.leaf.der))
        assert creds.valid_at(dt.datetime.now(dt.UTC)), "a stored pair must be valid"
        generation = int(creds.generation[1:])
    assert generation >= 51, f"only {generation} generations after {kills} kills"
    agent.start()
    agent.wait_ready()
    assert agent.stop() == 0
