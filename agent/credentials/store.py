"""Generations of credentials on disk, with ``current`` swapped by rename.

Layout::

    credentials/g00000007/{key.pem (0600), cert-chain.pem, bundle.pem}
    credentials/current -> g00000007

A generation is written in a hidden ``.gNNNNNNNN.partial`` directory, every
file fsynced, the directory renamed into place, and only then is ``current``
re-pointed (symlink + rename + directory fsync). So ``current`` always names a
complete generation whose key matches its certificate, whatever moment the
process is killed at; a crash leaves at most an unused directory that
``prepare()`` removes on the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import ssl
from pathlib import Path

from agent.credentials.der import Cert, load_pem_certs
from agent.credentials.model import Credentials
from meshcore.durable import fsync_dir, remove_stale_temps, replace_symlink, write_atomic

log = logging.getLogger(__name__)

_GEN = re.compile(r"^g(\d{8})$")
KEEP_GENERATIONS = 2


class StoreError(Exception):
    """The credential directory holds something we did not write (corruption).

    ``damaged`` lists what to move aside: the ``current`` link and the
    generation it names, when that exists."""

    def __init__(self, message: str, damaged: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.damaged = damaged


class CredentialStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.current_link = root / "current"

    def prepare(self) -> None:
        """Create the directory and clear what an interrupted write left behind."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        remove_stale_temps(self.root)
        for partial in self.root.glob(".g*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        try:
            live = self._current_name()
        except StoreError:
            return  # current() reports it; with no trusted pointer, delete nothing
        for name in self._generations():
            if live is not None and name > live:
                # Complete but never made current: the swap did not happen.
                shutil.rmtree(self.root / name, ignore_errors=True)

    def _generations(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _GEN.match(p.name) and p.is_dir())

    def _current_name(self) -> str | None:
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.current_link}: not a symlink ({exc.strerror})",
                             (self.current_link,)) from exc
        if not _GEN.match(target):
            # Also refuses anything outside this directory (absolute or "..").
            raise StoreError(f"{self.current_link} points at {target[:80]!r}, not a generation",
                             (self.current_link,))
        return target

    def _points_at(self) -> str | None:
        try:
            return os.readlink(self.current_link)
        except OSError:
            return None

    def current(self) -> Credentials | None:
        """The live credentials, or None before the first bootstrap."""
        name = self._current_name()
        if name is None:
            return None
        return self.load(name)

    def load(self, name: str) -> Credentials:
        directory = self.root / name
        try:
            key = (directory / "key.pem").read_bytes()
            chain = load_pem_certs((directory / "cert-chain.pem").read_bytes())
            bundle = load_pem_certs((directory / "bundle.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(f"generation {directory} is unreadable: {exc}",
                             (self.current_link, directory)) from exc
        problem = check_files(directory)
        if problem is not None:
            raise StoreError(f"generation {directory}: {problem}", (self.current_link, directory))
        return Credentials(name, directory, key, tuple(chain), tuple(bundle))

    @staticmethod
    def parse_bundle(bundle_pem: bytes) -> list[Cert]:
        """The bundle's certificates; StoreError when it holds none or does not parse."""
        try:
            return load_pem_certs(bundle_pem)
        except ValueError as exc:
            raise StoreError(f"unreadable trust bundle: {exc}") from exc

    def commit(self, key_pem: bytes, chain_pem: bytes, bundle_pem: bytes) -> Credentials:
        """Write a new generation and make it current. Refuses a mismatched pair
        (checked on the files written, before they become a generation)."""
        try:
            chain = load_pem_certs(chain_pem)
        except ValueError as exc:
            raise StoreError(f"refusing to store an unreadable certificate chain: {exc}") from exc
        bundle = self.parse_bundle(bundle_pem)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = self._generations()
        number = int(existing[-1][1:]) + 1 if existing else 1
        name = f"g{number:08d}"
        partial = self.root / f".{name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            partial.mkdir(mode=0o700)
            write_atomic(partial / "key.pem", key_pem, mode=0o600)
            write_atomic(partial / "cert-chain.pem", _pem(chain), mode=0o644)
            write_atomic(partial / "bundle.pem", _pem(bundle), mode=0o644)
            problem = check_files(partial)
            if problem is not None:
                shutil.rmtree(partial, ignore_errors=True)
                raise StoreError(f"refusing to store it: {problem}")
            os.chmod(partial, 0o700)
            os.rename(partial, self.root / name)
            fsync_dir(self.root)
            replace_symlink(self.current_link, name)
        except OSError:
            # A full or failing disk: leave no generation that ``current`` does not
            # name (prepare() keeps one when there is no ``current`` yet), so a
            # retry starts from what was there before.
            shutil.rmtree(partial, ignore_errors=True)
            if self._points_at() != name:
                shutil.rmtree(self.root / name, ignore_errors=True)
            raise
        self._prune(keep_from=name)
        log.info("credentials stored", extra={"generation": name})
        return self.load(name)

    def _prune(self, keep_from: str) -> None:
        names = self._generations()
        for name in names[:-KEEP_GENERATIONS]:
            if name != keep_from:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.root / name)


def _no_password() -> bytes:
    raise ValueError("the key is encrypted (the agent never writes one)")


def pair_matches(chain: Path, key: Path,
                 context: ssl.SSLContext | None = None) -> str | None:
    """None when OpenSSL (the standard library's ``ssl``) loads ``chain`` and
    ``key`` as a TLS identity, which parses every certificate of the chain and
    checks that the key is the one the first certifies; else what is wrong."""
    context = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(chain, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key does not match its certificate"
        return f"OpenSSL cannot load the key and chain ({exc.reason or exc})"
    except ValueError as exc:
        return str(exc)
    return None


def check_files(directory: Path) -> str | None:
    """What is wrong with a generation's files as Envoy's TLS would load them, or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    problem = pair_matches(directory / "cert-chain.pem", directory / "key.pem", context)
    if problem is not None:
        return problem
    try:
        context.load_verify_locations(directory / "bundle.pem")
    except ssl.SSLError as exc:
        return f"OpenSSL cannot load the trust bundle ({exc.reason or exc})"
    return None


def _pem(certs: list[Cert]) -> bytes:
    return b"".join(c.pem() for c in certs)
