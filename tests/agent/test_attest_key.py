"""The attestation key (agent/identity/attest_key.py): one key per attestation, kept
on disk 0600 for a restarted agent, a damaged file quarantined, an unwritable
state directory not fatal. Real files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from agent.identity.attest_key import FILE_NAME, AttestKey
from agent.identity.keys import PrivateKey, generate_key, public_der
from agent.state.quarantine import Quarantine
from meshcore.clock import SystemClock


def _key(state: Path) -> AttestKey:
    return AttestKey(state, "ecdsa-p256", Quarantine(state, SystemClock()))


def test_one_key_per_attestation_kept_for_a_restart_and_gone_once_stored(
        tmp_path: Path) -> None:
    first = _key(tmp_path)
    key = first.get()
    assert public_der(first.get()) == public_der(key)  # every retry: the same key
    path = tmp_path / FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    restarted = _key(tmp_path)  # an agent killed before the certificate was stored
    assert public_der(restarted.get()) == public_der(key)
    restarted.discard()
    assert not path.exists()
    assert public_der(_key(tmp_path).get()) != public_der(key)  # the next attestation


def test_a_damaged_file_is_quarantined_and_a_new_key_made(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    key = _key(tmp_path).get()
    moved = list((tmp_path / "quarantine").glob(f"*/{FILE_NAME}"))
    assert len(moved) == 1 and moved[0].read_bytes().endswith(b"garbage\n")
    assert public_der(_key(tmp_path).get()) == public_der(key)  # the new one is kept


def test_an_unwritable_key_file_keeps_the_key_in_memory(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()  # neither readable nor replaceable as a file, even by root
    attest_key = _key(tmp_path)
    key = attest_key.get()
    assert public_der(attest_key.get()) == public_der(key)  # retries in this run
    assert (tmp_path / FILE_NAME).is_dir()


def test_a_leftover_key_its_certificate_already_certifies_is_removed(tmp_path: Path) -> None:
    """An agent stopped after storing its certificate, before removing the file: the
    next start removes it, so a later attestation gets a key of its own."""
    attest_key = _key(tmp_path)
    key = attest_key.get()
    other = generate_key("ecdsa-p256")
    _key(tmp_path).forget_if_certified(_self_signed(other))
    assert (tmp_path / FILE_NAME).exists()  # another key's certificate: kept
    _key(tmp_path).forget_if_certified(_self_signed(key))
    assert not (tmp_path / FILE_NAME).exists()
    assert public_der(_key(tmp_path).get()) != public_der(key)


def _self_signed(key: PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
