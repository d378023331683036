"""Obtains the VM's credentials and keeps them fresh.

Start-up uses valid credentials from disk, else attests. From then on it
renews over mTLS at the scheduled point, retries passing faults until the
certificate expires, re-attests when renewal cannot work and evidence is
available, and otherwise ends the agent with ``EX_NO_IDENTITY`` and a
message that says how to recover. Each new generation is durable before the
join token is deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import AsyncRetrying

from agent.attest.base import AttestError, Attestor
from agent.credentials import Credentials, CredentialStore
from agent.identity.host import HostInfo
from agent.identity.issuer import IssuerClient
from agent.identity.keys import PrivateKey, build_csr, generate_key
from agent.istio.attestor import IstioTokenAttestor, recovery_hint
from agent.registrar_client import Issued, RegistrarError
from agent.registrar_client.errors import SUPERSEDED
from agent.rotation.retry import policy
from agent.rotation.schedule import delay_until, renewal_time
from agent.state.store import AgentState, StateFile
from agent.status.health import Health
from meshcore.clock import Clock, Rng, sleep_unless
from meshcore.exits import EX_CONFIG, EX_NO_IDENTITY

log = logging.getLogger(__name__)

# Where the mesh-registrar package keeps its config (its unit's --config).
REGISTRAR_CONFIG = "/etc/mesh-registrar/registrar.yaml"

# Failures that only an edit of the agent's config can fix.
CONFIG_REASONS = frozenset({"registrar_untrusted", "trust_anchor_unreadable",
                            "istiod_untrusted"})


class CannotContinue(Exception):
    """Ends the agent: no usable credentials and no way to get new ones."""

    def __init__(self, message: str, exit_code: int = EX_NO_IDENTITY) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Tuning:
    key_type: str
    renew_at: float
    jitter: float
    min_backoff: float
    max_backoff: float


RotatedHook = Callable[[Credentials], Awaitable[None]]


class IdentityManager:
    def __init__(self, *, store: CredentialStore, state_file: StateFile,
                 client: IssuerClient, choose_attestor: Callable[[], Awaitable[Attestor]],
                 clock: Clock, health: Health, tuning: Tuning, host: HostInfo,
                 rng: Rng) -> None:
        self.store = store
        self.state_file = state_file
        self.client = client
        self.tuning = tuning
        self._choose = choose_attestor
        self._attestor: Attestor | None = None
        self._clock = clock
        self._health = health
        self._host = host
        self._rng = rng
        self._state = AgentState()
        self._wake = asyncio.Event()
        self.on_rotated: list[RotatedHook] = []

    # -- start-up ----------------------------------------------------------------
    async def start(self) -> Credentials:
        """Credentials to serve now: from disk if still valid, else freshly attested."""
        self.store.prepare()
        self._state = self.state_file.load()
        self._health.update(attestor=self._state.attestor, rotations=self._state.rotations)
        creds = self.store.current()
        if creds is not None and creds.valid_at(self._clock.now()):
            self._health.update(credentials=creds, phase="ready")
            log.info("using stored credentials", extra={
                "spiffe_id": creds.spiffe_id, "generation": creds.generation,
                "not_after": creds.not_after.isoformat()})
            return creds
        if creds is not None:
            self._health.update(credentials=creds, phase="expired")
            log.warning("stored certificate expired; attesting again",
                        extra={"not_after": creds.not_after.isoformat()})
        return await self.attest()

    async def attestor(self) -> Attestor:
        if self._attestor is None:
            self._attestor = await self._choose()
            self._health.update(attestor=self._attestor.name)
            log.info("attestor chosen", extra={"attestor": self._attestor.name})
        return self._attestor

    async def attest(self) -> Credentials:
        attestor = await self.attestor()
        if not await attestor.detect():
            raise CannotContinue(self._no_evidence_message(attestor))
        self._health.update(phase="attesting")
        try:
            async for attempt in self._policy(deadline=None):
                with attempt:
                    key, issued = await self._attest_once(attestor)
        except RegistrarError as exc:
            self._failed(exc)
            code = EX_CONFIG if exc.reason in CONFIG_REASONS else EX_NO_IDENTITY
            raise CannotContinue(f"attestation refused: {exc}", exit_code=code) from None
        except AttestError as exc:
            self._failed(exc)
            raise CannotContinue(f"cannot collect evidence: {exc}",
                                 exit_code=EX_CONFIG if exc.config else EX_NO_IDENTITY) from None
        creds = self._install(key, issued, renewal=False)
        attestor.spent()
        for hook in self.on_rotated:
            await hook(creds)
        return creds

    async def _attest_once(self, attestor: Attestor) -> tuple[PrivateKey, Issued]:
        challenge = await self.client.challenge() if attestor.needs_challenge else None
        evidence = await attestor.evidence(challenge)
        key = generate_key(self.tuning.key_type)
        hostname, addresses = self._host()
        issued = await self.client.attest(evidence, build_csr(key, hostname), challenge=challenge,
                                          hostname=hostname, addresses=addresses)
        return key, issued

    # -- steady state --------------------------------------------------------------
    async def run(self) -> None:
        """Renew forever. Returns never; raises CannotContinue when out of options."""
        while True:
            when = self._next_renewal()
            log.debug("next renewal scheduled", extra={"at": when.isoformat()})
            await self._nap(delay_until(when, self._clock.now()))
            creds = self._health.current.credentials
            assert creds is not None
            await self.renew(creds)

    def _next_renewal(self) -> dt.datetime:
        creds = self._health.current.credentials
        assert creds is not None, "start() must succeed before run()"
        return renewal_time(creds.not_before, creds.not_after, ratio=self.tuning.renew_at,
                            jitter=self.tuning.jitter, sample=self._rng.uniform(-1, 1),
                            hint=self._hint())

    def renew_soon(self) -> None:
        """Wake the loop to recompute its schedule (config reload)."""
        self._wake.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep until the renewal point; a reload wakes us to recompute it."""
        self._wake.clear()
        while await sleep_unless(self._clock.sleep(seconds), self._wake):
            self._wake.clear()
            seconds = delay_until(self._next_renewal(), self._clock.now())

    async def renew(self, creds: Credentials) -> None:
        remaining = (creds.not_after - self._clock.now()).total_seconds()
        deadline = self._clock.monotonic() + max(0.0, remaining)
        self._health.update(phase="renewing")
        hostname, addresses = self._host()
        try:
            async for attempt in self._policy(deadline=deadline):
                with attempt:
                    key = generate_key(self.tuning.key_type)
                    issued = await self.client.renew(
                        build_csr(key, hostname), chain_file=creds.chain_path,
                        key_file=creds.key_path, hostname=hostname, addresses=addresses)
        except RegistrarError as exc:
            self._failed(exc)
            if exc.action == "retry":
                log.error("certificate expired while the registrar was unreachable",
                          extra={"not_after": creds.not_after.isoformat(), "error": str(exc)})
            else:
                log.error("renewal refused", extra={"reason": exc.reason, "error": str(exc)})
            await self._recover(exc)
            return
        new = self._install(key, issued, renewal=True)
        for hook in self.on_rotated:
            await hook(new)

    async def _recover(self, cause: RegistrarError) -> None:
        attestor = await self.attestor()
        if await attestor.detect():
            log.warning("re-attesting", extra={"attestor": attestor.name, "cause": cause.reason})
            await self.attest()
            return
        if cause.reason == SUPERSEDED:
            # Someone renewed with a newer certificate of this workload (a copy of this
            # VM's key, a restored snapshot): this lineage is dead and serving it on
            # would hide the fork, so stop now and say so.
            self._health.update(phase="expired")
            raise CannotContinue(
                "the registrar refused renewal (certificate_superseded): a newer certificate "
                "of this workload has already renewed, so this one never will. If this VM "
                "was cloned or restored from a snapshot, the copy holds the live identity. "
                + self._no_evidence_message(attestor))
        creds = self._health.current.credentials
        if creds is not None and creds.valid_at(self._clock.now()):
            log.error("cannot renew and no evidence to re-attest; serving the current "
                      "certificate until it expires", extra={
                          "not_after": creds.not_after.isoformat(), "reason": cause.reason})
            self._health.update(
                last_error=f"{cause.reason}; certificate expires {creds.not_after}")
            await self._clock.sleep(delay_until(creds.not_after, self._clock.now()))
        self._health.update(phase="expired")
        raise CannotContinue(
            f"the certificate expired or cannot be renewed ({cause.reason}) and there is no "
            f"evidence to attest again. {self._no_evidence_message(attestor)}")

    # -- shared ------------------------------------------------------------------
    def _policy(self, deadline: float | None) -> AsyncRetrying:
        return policy(clock=self._clock, rng=self._rng, min_backoff=self.tuning.min_backoff,
                      max_backoff=self.tuning.max_backoff, deadline=deadline,
                      on_failure=self._failed)

    def _failed(self, exc: BaseException) -> None:
        reason = exc.reason if isinstance(exc, RegistrarError) else type(exc).__name__
        if isinstance(exc, AttestError):
            reason = "attest_error"
        self._health.failed(reason, str(exc)[:300])

    def _hint(self) -> dt.datetime | None:
        if self._state.renew_after is None:
            return None
        try:
            return dt.datetime.fromisoformat(self._state.renew_after)
        except ValueError:
            return None

    def _install(self, key: PrivateKey, issued: Issued, *, renewal: bool) -> Credentials:
        creds = self.store.commit(key, issued.chain_pem, issued.bundle_pem)
        now = self._clock.now()
        self._state = self._state.updated(
            spiffe_id=issued.spiffe_id, mesh=dict(issued.mesh),
            renew_after=issued.renew_after.isoformat(), registrar_url=self.client.url,
            attestor=self._health.current.attestor, last_success=now.isoformat(),
            rotations=self._state.rotations + (1 if renewal else 0))
        self.state_file.save(self._state)
        # One snapshot: the status endpoint (another thread) never shows a new
        # serial with the old rotation count.
        self._health.update(rotations=self._state.rotations, last_success=now, last_error=None,
                            credentials=creds, phase="ready")
        log.info("certificate renewed" if renewal else "certificate issued", extra={
            "spiffe_id": creds.spiffe_id, "serial": creds.serial_hex,
            "generation": creds.generation, "not_after": creds.not_after.isoformat()})
        return creds

    @property
    def state(self) -> AgentState:
        return self._state

    @staticmethod
    def _no_evidence_message(attestor: Attestor) -> str:
        if isinstance(attestor, IstioTokenAttestor):
            return recovery_hint(attestor.path)
        if attestor.name == "token":
            return ("To recover: create a join token (`mesh-registrar token create --config "
                    f"{REGISTRAR_CONFIG} --group NAME` where the registrar runs), "
                    "write it to the token file (attestation.token_file, default "
                    "/etc/mesh-agent/bootstrap-token, mode 0600) and restart the agent "
                    "(`systemctl restart mesh-agent`).")
        return (f"The {attestor.name} metadata service gives no identity here; check the "
                "platform or set attestation.method.")
