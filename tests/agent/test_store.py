"""The credential store: a key and its cert are never visible as a mismatched
pair, whatever moment the writer dies at."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.credentials import CredentialStore, StoreError
from agent.identity.keys import generate_key, key_pem, load_key, matches
from tests.fixtures.certs import TestCA

SPIFFE = "spiffe://example.org/ns/default/sa/web"


def test_commit_makes_a_current_generation(tmp_path: Path) -> None:
    ca = TestCA()
    store = CredentialStore(tmp_path / "credentials")
    store.prepare()
    assert store.current() is None
    key = generate_key("ecdsa-p256")
    creds = store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem)
    assert creds.spiffe_id == SPIFFE
    current = store.current()
    assert current is not None and current.generation == creds.generation
    assert os.readlink(tmp_path / "credentials" / "current") == creds.generation
    assert stat.S_IMODE(creds.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "credentials").stat().st_mode) == 0o700


def test_generations_advance_and_old_ones_are_pruned(tmp_path: Path) -> None:
    ca = TestCA()
    store = CredentialStore(tmp_path / "c")
    names = []
    for _ in range(4):
        key = generate_key("ecdsa-p256")
        names.append(store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem).generation)
    assert names == sorted(names) and len(set(names)) == 4
    left = sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.startswith("g"))
    assert left == names[-2:]


def test_a_mismatched_pair_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    ca = TestCA()
    store = CredentialStore(tmp_path / "c")
    key = generate_key("ecdsa-p256")
    first = store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem)
    other = generate_key("ecdsa-p256")
    with pytest.raises(StoreError):
        store.commit(key_pem(generate_key("ecdsa-p256")), ca.issue(other, SPIFFE), ca.bundle_pem)
    current = store.current()
    assert current is not None and current.generation == first.generation


def test_prepare_removes_what_an_interrupted_write_left(tmp_path: Path) -> None:
    ca = TestCA()
    store = CredentialStore(tmp_path / "c")
    key = generate_key("ecdsa-p256")
    live = store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem)
    (tmp_path / "c" / ".g00000009.partial").mkdir()
    (tmp_path / "c" / ".key.pem.abc.tmp").write_text("x")
    orphan = tmp_path / "c" / "g00000005"
    orphan.mkdir()
    store.prepare()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["current", live.generation]


def test_a_corrupt_generation_is_reported_not_used(tmp_path: Path) -> None:
    ca = TestCA()
    store = CredentialStore(tmp_path / "c")
    key = generate_key("ecdsa-p256")
    creds = store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem)
    other = generate_key("ecdsa-p256")
    creds.chain_path.write_bytes(ca.issue(other, SPIFFE))
    with pytest.raises(StoreError):
        store.current()


def test_an_encrypted_key_is_reported_without_asking_for_a_password(tmp_path: Path) -> None:
    """OpenSSL would prompt on the terminal for a password it was not given."""
    ca = TestCA()
    store = CredentialStore(tmp_path / "c")
    key = generate_key("ecdsa-p256")
    creds = store.commit(key_pem(key), ca.issue(key, SPIFFE), ca.bundle_pem)
    creds.key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(StoreError, match="encrypted"):
        store.current()


WRITER = """
import sys
from pathlib import Path
from agent.credentials import CredentialStore
from agent.identity.keys import generate_key, key_pem
from tests.fixtures.certs import TestCA
ca = TestCA()
store = CredentialStore(Path(sys.argv[1]))
store.prepare()
print("ready", flush=True)
while True:
    key = generate_key("ecdsa-p256")
    chain = ca.issue(key, "spiffe://example.org/ns/default/sa/web")
    store.commit(key_pem(key), chain, ca.bundle_pem)
"""


def test_kill_9_at_random_moments_never_leaves_a_mismatched_pair(tmp_path: Path) -> None:
    """200 writers killed with SIGKILL at random points of a commit loop."""
    root = tmp_path / "c"
    rng = random.Random(1234)
    repo = Path(__file__).resolve().parents[2]
    checked = 0
    for _ in range(200):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=repo,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.03))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = CredentialStore(root)
        store.prepare()
        creds = store.current()
        if creds is None:
            continue
        assert matches(load_key(creds.key_pem), x509.load_der_x509_certificate(creds.leaf.der))
        checked += 1
    assert checked > 150
