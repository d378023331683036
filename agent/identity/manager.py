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
from typing import TYPE_CHECKING

from agent.attest.base import AttestError, Attestor
from agent.credentials import Credentials, CredentialStore
from agent.identity.attest_key import AttestKey
from agent.identity.host import HostInfo
from agent.identity.issuer import IssuerClient
from agent.identity.keygen import KeygenError, key_and_csr
from agent.identity.stored import load_stored
from agent.istio.attestor import IstioTokenAttestor, recovery_hint
from agent.registrar_client import Issued, RegistrarError
from agent.registrar_client.errors import SUPERSEDED
from agent.rotation.retry import backoff, policy
from agent.rotation.schedule import delay_until, min_interval, renewal_time
from agent.state.quarantine import Quarantine
from agent.state.store import AgentState, StateFile
from agent.status.health import Health
from meshcore.clock import Clock, Rng, sleep_unless
from meshcore.exits import EX_CONFIG, EX_NO_IDENTITY

if TYPE_CHECKING:
    from tenacity import AsyncRetrying

log = logging.getLogger(__name__)

# Where the mesh-registrar package keeps its config (its unit's --config).
REGISTRAR_CONFIG = "/etc/mesh-registrar/registrar.yaml"

# Failures that only an edit of the agent's config can fix.
ANCHOR_UNREADABLE = "trust_anchor_unreadable"
CONFIG_REASONS = frozenset({"registrar_untrusted", ANCHOR_UNREADABLE, "istiod_untrusted"})


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
        self._quarantine = Quarantine(state_file.path.parent, clock)
        # One key per attestation, across its retries and a restart (attest_key.py).
        self._attest_key = AttestKey(state_file.path.parent, tuning.key_type, self._quarantine)
        self._damage: str | None = None  # what start-up quarantined, for the exit message
        self._renew_now = False
        self._last_renewal: float | None = None  # monotonic, for the rate bound
        self._hurried = 0  # renewals in a row that the rate bound had to hold back
        self._disk_failures = 0  # renewals in a row that could not be stored
        # The registrar's Date at its last answer and our monotonic time then: its
        # clock carried forward on ours, whatever our wall clock does meanwhile.
        self._anchor: tuple[dt.datetime, float] | None = None

    # -- start-up ----------------------------------------------------------------
    async def start(self) -> Credentials:
        """Credentials to serve now: from disk if still valid, else freshly attested."""
        stored = load_stored(self.store, self.state_file, self._quarantine)
        self._state, self._damage = stored.state, stored.damage
        self._health.update(attestor=self._state.attestor, rotations=self._state.rotations)
        creds = stored.creds
        if creds is not None:
            self._attest_key.forget_if_certified(creds.chain_path)
        now = self._clock.now()
        if creds is not None and now < creds.not_before and now < creds.not_after:
            # Not yet valid by our clock: it was issued by the registrar's, so ours is
            # behind. Never discard it: renew at once and let the registrar judge.
            log.warning("stored certificate is not yet valid by this host's clock; keeping "
                        "it and renewing now (is the clock behind?)", extra={
                            "not_before": creds.not_before.isoformat(),
                            "now": now.isoformat()})
            self._health.update(credentials=creds, phase="ready")
            self._renew_now = True
            return creds
        if creds is not None and creds.valid_at(now):
            self._health.update(credentials=creds, phase="ready")
            log.info("using stored credentials", extra={
                "spiffe_id": creds.spiffe_id, "generation": creds.generation,
                "not_after": creds.not_after.isoformat()})
            # A renewal gives back the mesh settings and hint the lost state.json held.
            self._renew_now = stored.state_damaged
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
            damage = f"{self._damage}. " if self._damage else ""
            raise CannotContinue(damage + self._no_evidence_message(attestor))
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
        stored = await self._store_first(key, issued)
        self._attest_key.discard()  # stored with its certificate, or that one expired
        if stored is None:
            log.warning("the issued certificate expired before it could be stored; "
                        "attesting again")
            return await self.attest()
        creds = stored
        attestor.spent()
        for hook in self.on_rotated:
            await hook(creds)
        return creds

    async def _store_first(self, key: bytes, issued: Issued) -> Credentials | None:
        """Store what the first attestation got, retrying a full or failing disk
        (ENOSPC, EIO, ...) with backoff while the certificate lasts.

        The evidence is spent (a join token is single use), so the issued
        certificate and its key are kept in memory and only the write is retried;
        each failed try leaves no generation behind (``CredentialStore.commit``).
        None when the certificate expired first."""
        self._observe_clock()
        failures = 0
        stored: Credentials | None = None
        while True:
            try:
                if stored is None:  # once stored, only state.json is left to write
                    stored = self.store.commit(key, issued.chain_pem, issued.bundle_pem)
                return self._record(stored, issued, renewal=False)
            except OSError as exc:
                failures += 1
                error = (f"cannot store the issued certificate: "
                         f"{exc.filename or self.store.root}: {exc.strerror or exc}")
                self._health.failed("storage_error", error)
                left = (issued.not_after - self._now()).total_seconds()
                if left <= 0:
                    return None
                wait = min(left, backoff(failures, min_backoff=self.tuning.min_backoff,
                                         max_backoff=self.tuning.max_backoff, rng=self._rng))
                log.error("issued certificate not stored; retrying", extra={
                    "error": error, "attempt": failures, "retry_in_seconds": round(wait, 2)})
                await self._clock.sleep(wait)

    async def _attest_once(self, attestor: Attestor) -> tuple[bytes, Issued]:
        # The same key on every try: a retry whose answer was lost gets the certificate
        # the spent token already paid for only when it asks for the same key.
        hostname, addresses = self._host()
        key, csr = await self._attest_key.csr(hostname)
        challenge = await self.client.challenge() if attestor.needs_challenge else None
        evidence = await attestor.evidence(challenge)
        issued = await self.client.attest(evidence, csr, challenge=challenge,
                                          hostname=hostname, addresses=addresses)
        return key, issued

    # -- steady state --------------------------------------------------------------
    async def run(self) -> None:
        """Renew forever. Returns never; raises CannotContinue when out of options."""
        while True:
            when = self._next_renewal()
            log.debug("next renewal scheduled", extra={"at": when.isoformat()})
            await self._nap(self._delay())
            creds = self._health.current.credentials
            assert creds is not None
            await self.renew(creds)
            self._renew_now = False
            self._last_renewal = self._clock.monotonic()

    def _now(self) -> dt.datetime:
        """Now by the registrar's clock when ours is known to be off."""
        wall = self._clock.now()
        if self._anchor is not None:
            date, mono = self._anchor
            registrar = date + dt.timedelta(seconds=self._clock.monotonic() - mono)
            self._set_offset((registrar - wall).total_seconds())
        return self._health.current.registrar_now(wall)

    def refresh_clock(self) -> None:
        """Re-measure the offset against the carried-forward registrar clock, so a
        step of our wall clock shows in status within one call."""
        self._now()

    def _delay(self) -> float:
        """Seconds to the next renewal: the schedule, held back by the rate bound.

        The bound runs on the monotonic clock, so no wall-clock step (ahead past
        the expiry, or a registrar whose clock disagrees) can make renewals
        back-to-back; each time the schedule says "now" again, the interval doubles."""
        creds = self._health.current.credentials
        assert creds is not None
        wanted = delay_until(self._next_renewal(), self._now())
        if self._last_renewal is None or self._disk_failures:
            return wanted
        gap = min_interval(creds.not_before, creds.not_after, hurried=self._hurried)
        allowed = self._last_renewal + gap - self._clock.monotonic()
        if wanted >= allowed:
            self._hurried = 0
            return wanted
        if wanted <= 0:
            # Due again at once: the schedule itself is wrong (a clock, a past hint).
            self._hurried += 1
        log.warning("renewal held back by the rate bound", extra={
            "wanted_in_seconds": round(wanted, 2), "held_for_seconds": round(allowed, 2)})
        return max(0.0, allowed)

    def _next_renewal(self) -> dt.datetime:
        creds = self._health.current.credentials
        assert creds is not None, "start() must succeed before run()"
        if self._renew_now:
            return self._now()
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
            seconds = self._delay()

    async def renew(self, creds: Credentials) -> None:
        remaining = (creds.not_after - self._now()).total_seconds()
        deadline = self._clock.monotonic() + max(0.0, remaining)
        self._health.update(phase="renewing")
        hostname, addresses = self._host()
        try:
            async for attempt in self._policy(deadline=deadline):
                with attempt:
                    key, csr = await key_and_csr(self.tuning.key_type, hostname)
                    issued = await self._renew_once(csr, creds, hostname, addresses)
        except KeygenError as exc:
            # Retried like a passing fault until the certificate expired.
            self._failed(exc)
            self._health.update(phase="expired")
            raise CannotContinue(f"the certificate expired while no new key could be made: "
                                 f"{exc}") from None
        except RegistrarError as exc:
            self._failed(exc)
            if exc.reason == ANCHOR_UNREADABLE:
                self._health.update(phase="expired")
                raise CannotContinue(
                    f"the certificate expired while the local trust anchor was unreadable "
                    f"({exc.message}). To recover: restore registrar.ca_file "
                    f"({self.client.ca_file}) and restart the agent (`systemctl restart "
                    f"mesh-agent`)", exit_code=EX_CONFIG) from None
            if exc.action == "retry":
                log.error("certificate expired while the registrar was unreachable",
                          extra={"not_after": creds.not_after.isoformat(), "error": str(exc)})
            else:
                log.error("renewal refused", extra={"reason": exc.reason, "error": str(exc)})
            await self._recover(exc)
            return
        try:
            new = self._install(key, issued, renewal=True)
        except OSError as exc:
            await self._not_stored(exc)
            return
        for hook in self.on_rotated:
            await hook(new)

    async def adopt_bundle(self, bundle_pem: bytes) -> bool:
        """A new trust bundle for the certificate we hold (a CA rotation published
        it): a new generation with the same key and chain, handed to Envoy like a
        renewal. No await between reading and committing: a renewal cannot land in
        between and be undone. False when nothing changed."""
        creds = self._health.current.credentials
        if creds is None:
            return False
        offered = self.store.parse_bundle(bundle_pem)
        if set(offered) == set(creds.bundle):
            return False
        new = self.store.commit(creds.key_pem, creds.chain_path.read_bytes(), bundle_pem)
        self._health.update(credentials=new)
        log.info("trust bundle updated", extra={"generation": new.generation,
                                                "roots": len(new.bundle)})
        for hook in self.on_rotated:
            await hook(new)
        return True

    async def _not_stored(self, exc: OSError) -> None:
        """A full or failing disk (ENOSPC, EIO, ...) while storing a renewal: the
        current generation is untouched and still served; retry with backoff."""
        self._disk_failures += 1
        error = f"cannot store the renewed certificate: {exc.filename or self.store.root}: " \
                f"{exc.strerror or exc}"
        self._health.failed("storage_error", error)
        wait = backoff(self._disk_failures, min_backoff=self.tuning.min_backoff,
                       max_backoff=self.tuning.max_backoff, rng=self._rng)
        log.error("renewed certificate not stored; still serving the current one", extra={
            "error": error, "attempt": self._disk_failures, "retry_in_seconds": round(wait, 2)})
        await self._clock.sleep(wait)
        self._renew_now = True

    async def _renew_once(self, csr: bytes, creds: Credentials, hostname: str,
                          addresses: list[str]) -> Issued:
        try:
            return await self.client.renew(
                csr, chain_file=creds.chain_path,
                key_file=creds.key_path, hostname=hostname, addresses=addresses)
        except RegistrarError as exc:
            if exc.reason != ANCHOR_UNREADABLE:
                raise
            # Nothing reached the registrar: our own file is missing or broken. It
            # may come back (a config push), so retry until the certificate expires.
            log.error("cannot renew: the local trust anchor is unreadable; nothing was "
                      "sent to the registrar", extra={"ca_file": str(self.client.ca_file),
                                                      "error": exc.message})
            raise RegistrarError("retry", exc.reason, exc.message, url=exc.url) from None

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
        if creds is not None and creds.valid_at(self._now()):
            log.error("cannot renew and no evidence to re-attest; serving the current "
                      "certificate until it expires", extra={
                          "not_after": creds.not_after.isoformat(), "reason": cause.reason})
            self._health.update(
                last_error=f"{cause.reason}; certificate expires {creds.not_after}")
            await self._clock.sleep(delay_until(creds.not_after, self._now()))
        self._health.update(phase="expired")
        raise CannotContinue(
            f"the certificate expired or cannot be renewed ({cause.reason}) and there is no "
            f"evidence to attest again. {self._no_evidence_message(attestor)}")

    # -- shared ------------------------------------------------------------------
    def _policy(self, deadline: float | None) -> AsyncRetrying:
        return policy(clock=self._clock, rng=self._rng, min_backoff=self.tuning.min_backoff,
                      max_backoff=self.tuning.max_backoff, deadline=deadline,
                      on_failure=self._failed)

    def _observe_clock(self) -> None:
        """Record the registrar's clock offset from its last answer's Date header."""
        date, self.client.last_date = self.client.last_date, None
        if date is None:
            return
        self._anchor = (date, self._clock.monotonic())
        self._set_offset((date - self._clock.now()).total_seconds())

    def _set_offset(self, offset: float) -> None:
        was = self._health.current.clock_skewed
        old = self._health.current.clock_offset
        if old is not None and abs(old - offset) < 0.5:
            return
        self._health.update(clock_offset=round(offset, 1))
        now = self._health.current
        if now.clock_skewed and not was:
            log.warning("clock skew: the registrar's clock is %+.0fs from this host's; "
                        "judging certificates by the registrar's (fix the host's time)",
                        now.clock_offset, extra={"offset_seconds": now.clock_offset})
        elif was and not now.clock_skewed:
            log.info("clock skew gone", extra={"offset_seconds": now.clock_offset})

    def _failed(self, exc: BaseException) -> None:
        self._observe_clock()
        reason = exc.reason if isinstance(exc, RegistrarError) else type(exc).__name__
        if isinstance(exc, AttestError):
            reason = "attest_error"
        elif isinstance(exc, KeygenError):
            reason = exc.reason
        self._health.failed(reason, str(exc)[:300])

    def _hint(self) -> dt.datetime | None:
        if self._state.renew_after is None:
            return None
        try:
            return dt.datetime.fromisoformat(self._state.renew_after)
        except ValueError:
            return None

    def _install(self, key: bytes, issued: Issued, *, renewal: bool) -> Credentials:
        self._observe_clock()
        return self._record(self.store.commit(key, issued.chain_pem, issued.bundle_pem),
                            issued, renewal=renewal)

    def _record(self, creds: Credentials, issued: Issued, *, renewal: bool) -> Credentials:
        """state.json and status for credentials already stored."""
        now = self._clock.now()
        self._state = self._state.updated(
            spiffe_id=issued.spiffe_id, mesh=dict(issued.mesh),
            renew_after=issued.renew_after.isoformat(), registrar_url=self.client.url,
            attestor=self._health.current.attestor, last_success=now.isoformat(),
            rotations=self._state.rotations + (1 if renewal else 0))
        self.state_file.save(self._state)
        # One snapshot: the status endpoint (another thread) never shows a new
        # serial with the old rotation count.
        self._disk_failures = 0
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
