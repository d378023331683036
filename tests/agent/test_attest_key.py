"""The attestation key (agent/identity/attest_key.py): one key per attestation, kept
on disk 0600 for a restarted agent, a damaged file quarantined, an unwritable
state directory not fatal. Real files."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.identity.attest_key import FILE_NAME, AttestKey
from agent.identity.keys import PrivateKey, generate_key, load_key, public_der
from agent.state.quarantine import Quarantine
from meshcore.clock import SystemClock


def _key(state: Path) -> AttestKey:
    return AttestKey(state, "ecdsa-p256", Quarantine(state, SystemClock()))


def _get(attest_key: AttestKey) -> bytes:
    """The public key the attestation asks for, read from the CSR the helper
    process made (and checked against the private key it handed back)."""
    key_pem, csr_pem = asyncio.run(attest_key.csr("vm"))
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    requested = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert requested == public_der(load_key(key_pem))
    return requested


def test_one_key_per_attestation_kept_for_a_restart_and_gone_once_stored(
        tmp_path: Path) -> None:
    first = _key(tmp_path)
    key = _get(first)
    assert _get(first) == key  # every retry: the same key
    path = tmp_path / FILE_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_der(load_key(path.read_bytes())) == key
    restarted = _key(tmp_path)  # an agent killed before the certificate was stored
    assert _get(restarted) == key
    restarted.discard()
    assert not path.exists()
    assert _get(_key(tmp_path)) != key  # the next attestation


def test_a_damaged_file_is_quarantined_and_a_new_key_made(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    key = _get(_key(tmp_path))
    moved = list((tmp_path / "quarantine").glob(f"*/{FILE_NAME}"))
    assert len(moved) == 1 and moved[0].read_bytes().endswith(b"garbage\n")
    assert _get(_key(tmp_path)) == key  # the new one is kept


def test_an_unwritable_key_file_keeps_the_key_in_memory(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).mkdir()  # neither readable nor replaceable as a file, even by root
    attest_key = _key(tmp_path)
    key = _get(attest_key)
    assert _get(attest_key) == key  # retries in this run
    assert (tmp_path / FILE_NAME).is_dir()


def test_a_leftover_key_its_certificate_already_certifies_is_removed(tmp_path: Path) -> None:
    """An agent stopped after storing its certificate, before removing the file: the
    next start removes it, so a later attestation gets a key of its own."""
    attest_key = _key(tmp_path)
    key = _get(attest_key)
    kept = load_key((tmp_path / FILE_NAME).read_bytes())
    other = tmp_path / "other.pem"
    other.write_bytes(_self_signed(generate_key("ecdsa-p256")))
    _key(tmp_path).forget_if_certified(other)
    assert (tmp_path / FILE_NAME).exists()  # another key's certificate: kept
    mine = tmp_path / "mine.pem"
    mine.write_bytes(_self_signed(kept))
    _key(tmp_path).forget_if_certified(mine)
    assert not (tmp_path / FILE_NAME).exists()
    assert _get(_key(tmp_path)) != key


def _self_signed(key: PrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM))
