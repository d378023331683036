"""``istio.token_source: registrar``: istiod's token comes from mesh-registrar, not a file.

Two identities, two steps. The VM first proves what it is to mesh-registrar with
the registrar's own attest flow (a join token or cloud evidence, chosen by the
``attestation:`` section exactly as in static mode) and keeps the registrar
certificate it gets: a key made here, stored under ``<state_dir>/registrar-identity/``
(0600, written atomically), renewed over mTLS past half-life. Then, whenever
the agent must authenticate to istiod with a token (its first certificate, and
any time istiod refuses a renewal by certificate), it asks the registrar for a
fresh JWT over mTLS with that certificate: short-lived (the registrar's
``oidc.token_ttl``), for its own identity only, never written to disk or logged.

The istiod workload certificate and the registrar certificate are kept apart:
istiod's CA signs the first, the registrar's CA the second, and neither can
renew the other.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.attest.base import AttestError, Attestor, Evidence
from agent.identity.keys import build_csr, generate_key, key_pem, load_key, matches
from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.errors import RegistrarError
from meshcore.clock import Clock
from meshcore.durable import write_atomic

log = logging.getLogger(__name__)
NAME = "registrar"
DIR = "registrar-identity"
HostInfo = Callable[[], tuple[str, list[str]]]


@dataclass(frozen=True)
class RegistrarIdentity:
    chain_file: Path
    key_file: Path
    not_before: dt.datetime
    not_after: dt.datetime

    def renew_due(self, now: dt.datetime) -> bool:
        return now >= self.not_before + (self.not_after - self.not_before) / 2

    def valid(self, now: dt.datetime) -> bool:
        return now < self.not_after - dt.timedelta(seconds=5)


class RegistrarIdentityStore:
    """The registrar certificate and its key, on disk (0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key_file = directory / "key.pem"
        self.chain_file = directory / "cert-chain.pem"

    def load(self) -> RegistrarIdentity | None:
        """The stored identity; None when absent or unusable (then: attest again)."""
        try:
            key = load_key(self.key_file.read_bytes())
            leaf = x509.load_pem_x509_certificate(self.chain_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("registrar identity unreadable; attesting again",
                        extra={"dir": str(self.directory), "error": str(exc)[:200]})
            return None
        if not matches(key, leaf):
            log.warning("registrar identity: key and certificate differ; attesting again",
                        extra={"dir": str(self.directory)})
            return None
        return RegistrarIdentity(self.chain_file, self.key_file, leaf.not_valid_before_utc,
                                 leaf.not_valid_after_utc)

    def save(self, key_pem_bytes: bytes, chain_pem: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The key first: a chain on disk always has its key beside it.
        write_atomic(self.key_file, key_pem_bytes, mode=0o600)
        write_atomic(self.chain_file, chain_pem, mode=0o600)


class RegistrarTokenSource:
    """Registrar identity (attest, renew) and the JWTs it buys."""

    def __init__(self, client: RegistrarClient, choose: Callable[[], Awaitable[Attestor]], *,
                 state_dir: Path, key_type: str, clock: Clock, host: HostInfo,
                 audience: str | None = None) -> None:
        self.client = client
        self._choose = choose
        self._store = RegistrarIdentityStore(state_dir / DIR)
        self._key_type = key_type
        self._clock = clock
        self._host = host
        self._audience = audience
        self._attestor: Attestor | None = None

    async def attestor(self) -> Attestor:
        if self._attestor is None:
            self._attestor = await self._choose()
        return self._attestor

    async def _attest(self) -> RegistrarIdentity:
        attestor = await self.attestor()
        if not await attestor.detect():
            raise AttestError(f"no evidence for mesh-registrar: the {attestor.name} attestor "
                              "found none on this VM (a join token file, or the cloud's "
                              "metadata service)", retryable=False)
        challenge = await self.client.challenge() if attestor.needs_challenge else None
        evidence = await attestor.evidence(challenge)
        key = generate_key(self._key_type)
        hostname, addresses = self._host()
        issued = await self.client.attest(evidence, build_csr(key, hostname),
                                          challenge=challenge, hostname=hostname,
                                          addresses=addresses)
        self._store.save(key_pem(key), issued.chain_pem)
        attestor.spent()  # only now may a one-time join token go
        log.info("attested to mesh-registrar", extra={
            "spiffe_id": issued.spiffe_id, "attestor": attestor.name,
            "not_after": issued.not_after.isoformat()})
        identity = self._store.load()
        assert identity is not None
        return identity

    async def _renew(self, identity: RegistrarIdentity) -> RegistrarIdentity:
        key = generate_key(self._key_type)
        hostname, addresses = self._host()
        issued = await self.client.renew(build_csr(key, hostname),
                                         chain_file=identity.chain_file,
                                         key_file=identity.key_file, hostname=hostname,
                                         addresses=addresses)
        self._store.save(key_pem(key), issued.chain_pem)
        renewed = self._store.load()
        assert renewed is not None
        return renewed

    async def identity(self) -> RegistrarIdentity:
        """A registrar certificate valid now: stored, renewed, or attested afresh."""
        now = self._clock.now()
        identity = self._store.load()
        if identity is None or not identity.valid(now):
            return await self._attest()
        if identity.renew_due(now):
            try:
                return await self._renew(identity)
            except RegistrarError as exc:
                if exc.action == "reattest":
                    return await self._attest()
                log.warning("registrar identity renewal failed; using the current one",
                            extra={"reason": exc.reason})
        return identity

    async def keep_alive(self, *, min_backoff: float = 1.0, max_backoff: float = 120.0,
                         idle: float = 60.0) -> None:
        """Renew the registrar certificate at half-life for as long as the agent runs.

        Tokens are needed rarely (istiod renewals go over mTLS), so without this the
        registrar certificate would lapse between them, and attesting again is not
        always possible: EC2's identity document is accepted once per instance, and
        a join token is spent."""
        backoff = min_backoff
        while True:
            identity = self._store.load()
            if identity is None:  # not attested yet: the first token request does that
                await self._clock.sleep(idle)
                continue
            half = identity.not_before + (identity.not_after - identity.not_before) / 2
            wait = (half - self._clock.now()).total_seconds()
            if wait > 0:
                await self._clock.sleep(wait)
                continue
            try:
                await self.identity()
                backoff = min_backoff
            except (RegistrarError, AttestError) as exc:
                log.warning("registrar identity renewal failed; retrying",
                            extra={"error": str(exc)[:300], "retry_in": backoff})
                await self._clock.sleep(backoff)
                backoff = min(max_backoff, backoff * 2)

    async def token(self) -> Evidence:
        """A fresh JWT for istiod, as the evidence the CA client presents."""
        identity = await self.identity()
        try:
            token, lifetime = await self.client.oidc_token(
                chain_file=identity.chain_file, key_file=identity.key_file,
                audience=self._audience)
        except RegistrarError as exc:
            if exc.action != "reattest":
                raise
            # Evicted, superseded or unknown: prove ourselves again, once.
            identity = await self._attest()
            token, lifetime = await self.client.oidc_token(
                chain_file=identity.chain_file, key_file=identity.key_file,
                audience=self._audience)
        log.info("token for istiod from mesh-registrar", extra={"lifetime": lifetime})
        return Evidence("istio-token", {"token": token})


class RegistrarTokenAttestor:
    """The ``Attestor`` of Istio mode with ``token_source: registrar``."""

    name = NAME
    needs_challenge = False

    def __init__(self, source: RegistrarTokenSource) -> None:
        self._source = source

    async def detect(self) -> bool:
        # Whether evidence exists is decided per attempt in evidence(): a stored
        # registrar identity needs none, and the cloud's metadata may come late.
        return True

    async def evidence(self, challenge: str | None) -> Evidence:
        try:
            return await self._source.token()
        except RegistrarError as exc:
            if exc.action == "retry":
                raise
            raise AttestError(f"mesh-registrar refused ({exc.reason}): {exc}",
                              retryable=False) from None

    def spent(self) -> None:
        """Each token is fresh and short-lived; nothing on disk to remove."""
