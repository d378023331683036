"""The key one attestation asks its certificate for, kept until that certificate is stored.

A join token (or an EC2 instance's first use) pays for one certificate, for one
key: when the answer to an attest is lost (a registrar replica killed after its
commit, a connection cut), the registrar answers the retry with that same
certificate only if the CSR is for the same key, and refuses any other key
(``token_spent``, ``instance_already_attested``). So the key is made
once per attestation, used by every retry, and kept on disk
(``STATE/attest-key.pem``, 0600, written atomically) before the first request,
so that an agent restarted meanwhile asks with it too. Once the issued
certificate is stored with its key in a generation, the file goes (and a start
that finds the file beside a certificate for its key removes it).

The key is never logged. A file that cannot be written (a full or failing disk)
does not stop the attestation: retries in this run still use the key in memory.
A file that cannot be read as a key is quarantined and a new key made.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.credentials.store import pair_matches
from agent.identity.keygen import KeygenError, key_and_csr
from agent.state.quarantine import Quarantine
from meshcore.durable import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "attest-key.pem"


class AttestKey:
    def __init__(self, state_dir: Path, key_type: str, quarantine: Quarantine) -> None:
        self.path = state_dir / FILE_NAME
        self._key_type = key_type
        self._quarantine = quarantine
        self._key: bytes | None = None  # PEM (PKCS#8)

    async def csr(self, hostname: str) -> tuple[bytes, bytes]:
        """The attestation's key (the one already in use, else the kept one, else a
        new one) and a CSR for it."""
        if self._key is None:
            kept = self._kept()
            if kept is not None:
                try:
                    self._key, csr = await key_and_csr(self._key_type, hostname, kept)
                except KeygenError as exc:
                    if exc.reason != "not_a_key":
                        raise
                    self._quarantine.move([self.path], f"{self.path} is not a private key")
                else:
                    log.info("attesting with the key kept from an earlier try", extra={
                        "path": str(self.path)})
                    return self._key, csr
            if self._key is None:
                return await self._new(hostname)
        return await key_and_csr(self._key_type, hostname, self._key)

    def discard(self) -> None:
        """The certificate for the key is stored (or no attestation is under way)."""
        self._key = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # a leftover is harmless: the next attestation re-uses it
            log.warning("cannot remove the kept attestation key", extra={
                "path": str(self.path), "error": exc.strerror or str(exc)})

    def forget_if_certified(self, chain: Path) -> None:
        """At start, with stored credentials: a kept key that the certificate in
        ``chain`` already certifies is a leftover of an agent stopped between
        storing the certificate and removing the file; it must not become the
        next attestation's key."""
        if self.path.exists() and pair_matches(chain, self.path) is None:
            self.discard()

    def _kept(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the kept attestation key; making a new one", extra={
                "path": str(self.path), "error": exc.strerror or str(exc)})
            return None

    async def _new(self, hostname: str) -> tuple[bytes, bytes]:
        key, csr = await key_and_csr(self._key_type, hostname)
        self._key = key
        try:
            write_atomic(self.path, key, mode=0o600)
        except OSError as exc:
            log.warning("cannot keep the attestation key on disk; retries in this run still "
                        "use it, a restart before the certificate is stored would not", extra={
                            "path": str(self.path), "error": exc.strerror or str(exc)})
        return key, csr
