"""The OIDC signing keys on disk, and their rotation with overlap.

Layout of ``key_dir`` (0700): ``keys.json`` (which keys exist, which one signs,
when each stopped signing) and one ``<kid>.pem`` per key (PKCS#8, 0600), all
written with ``write_atomic`` like the CA key. These keys are never the CA's.

RSA-2048 and RS256: with a ``jwks_uri`` in ``JWT_RULE``, istiod's verifier
accepts RS256 alone (go-oidc's default when no algorithm list is given).

Rotation: a new key is made and becomes the signer; the old one stays in the
JWKS until every token it signed has expired, i.e. ``retired_at +
max_token_ttl`` (plus a minute for a request that was signing while the
rotation landed), then it leaves the JWKS and ``rotate`` deletes its file.
Every worker re-reads ``keys.json`` when its mtime changes, so a rotation by
the CLI takes effect without a restart.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.durable import write_atomic

INDEX = "keys.json"
GRACE = 60.0  # a request that picked the old key just before a rotation landed


class KeyRingError(Exception):
    """The key directory is unusable (damaged index, missing key file)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}


def thumbprint(key: rsa.RSAPublicKey) -> str:
    """RFC 7638: the kid is the JWK's SHA-256 thumbprint (stable, no registry needed)."""
    jwk = public_jwk(key)
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class KeyEntry:
    kid: str
    created: float
    retired_at: float | None  # None: the signing key

    def published(self, now: float, max_ttl: float) -> bool:
        return self.retired_at is None or now < self.retired_at + max_ttl + GRACE


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeySet:
    """One reading of the ring: the signer and every key the JWKS must publish."""

    signer: SigningKey
    published: tuple[tuple[str, rsa.RSAPublicKey], ...]
    entries: tuple[KeyEntry, ...]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**public_jwk(pub), "kid": kid, "alg": "RS256", "use": "sig"}
                         for kid, pub in self.published]}


@contextlib.contextmanager
def _locked(key_dir: Path) -> Iterator[None]:
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    fd = os.open(key_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_entries(key_dir: Path) -> list[KeyEntry]:
    path = key_dir / INDEX
    try:
        data = json.loads(path.read_text())
        entries = [KeyEntry(str(e["kid"]), float(e["created"]),
                            None if e["retired_at"] is None else float(e["retired_at"]))
                   for e in data["keys"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyRingError(f"{path}: not a key index this registrar wrote ({exc})") from None
    if sum(1 for e in entries if e.retired_at is None) != 1:
        raise KeyRingError(f"{path}: exactly one key must be the signing key")
    return entries


def _write_entries(key_dir: Path, entries: list[KeyEntry]) -> None:
    body = {"version": 1, "keys": [{"kid": e.kid, "created": e.created,
                                    "retired_at": e.retired_at} for e in entries]}
    write_atomic(key_dir / INDEX, (json.dumps(body, indent=2) + "\n").encode(), mode=0o600)


def _new_key(key_dir: Path, now: float) -> KeyEntry:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = thumbprint(private.public_key())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomic(key_dir / f"{kid}.pem", pem, mode=0o600)  # durable before the index names it
    return KeyEntry(kid, now, None)


def ensure(key_dir: Path, now: float) -> bool:
    """Create the first signing key if there is none; True if one was made. With a
    key present it only reads (no lock file, no chmod): replicas may share the state
    directory as a read-only mount."""
    if key_dir.is_dir() and _read_entries(key_dir):
        return False
    with _locked(key_dir):
        if _read_entries(key_dir):
            return False
        _write_entries(key_dir, [_new_key(key_dir, now)])
        return True


def rotate(key_dir: Path, now: float, max_ttl: float) -> tuple[KeyEntry, list[KeyEntry]]:
    """A new signing key; the old stays published until its tokens expired. Keys past
    that are deleted. Returns (the new key, the keys removed)."""
    with _locked(key_dir):
        entries = _read_entries(key_dir)
        new = _new_key(key_dir, now)
        kept: list[KeyEntry] = []
        removed: list[KeyEntry] = []
        for old in entries:
            e = KeyEntry(old.kid, old.created, now) if old.retired_at is None else old
            (kept if e.published(now, max_ttl) else removed).append(e)
        _write_entries(key_dir, [*kept, new])
        for e in removed:
            (key_dir / f"{e.kid}.pem").unlink(missing_ok=True)
        return new, removed


def entries(key_dir: Path) -> list[KeyEntry]:
    return _read_entries(key_dir)


def load(key_dir: Path, now: float, max_ttl: float) -> KeySet:
    entries = _read_entries(key_dir)
    if not entries:
        raise KeyRingError(f"{key_dir / INDEX}: no signing key (mesh-registrar serve makes one)")
    signer: SigningKey | None = None
    published: list[tuple[str, rsa.RSAPublicKey]] = []
    for e in entries:
        if not e.published(now, max_ttl):
            continue
        path = key_dir / f"{e.kid}.pem"
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise KeyRingError(f"{path}: cannot load the signing key ({exc})") from None
        if not isinstance(private, rsa.RSAPrivateKey) or thumbprint(
                private.public_key()) != e.kid:
            raise KeyRingError(f"{path}: is not the RSA key {e.kid}")
        published.append((e.kid, private.public_key()))
        if e.retired_at is None:
            signer = SigningKey(e.kid, private)
    assert signer is not None  # _read_entries checked there is one
    return KeySet(signer, tuple(published), tuple(entries))


class KeyRing:
    """A worker's view of the ring: re-read when ``keys.json`` changes, and when a
    retired key's overlap ends (so the JWKS drops it on time)."""

    def __init__(self, key_dir: Path, max_ttl: float) -> None:
        self._dir = key_dir
        self._max_ttl = max_ttl
        self._stamp: tuple[int, int] | None = None
        self._set: KeySet | None = None
        self._next_expiry = float("inf")

    def current(self, now: float) -> KeySet:
        st = (self._dir / INDEX).stat()
        stamp = (st.st_mtime_ns, st.st_ino)
        if self._set is None or stamp != self._stamp or now >= self._next_expiry:
            self._set = load(self._dir, now, self._max_ttl)
            self._stamp = stamp
            ends = [e.retired_at + self._max_ttl + GRACE for e in self._set.entries
                    if e.retired_at is not None and e.published(now, self._max_ttl)]
            self._next_expiry = min(ends, default=float("inf"))
        return self._set
