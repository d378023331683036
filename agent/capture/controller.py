"""Capture's lifecycle in the agent: apply after Envoy is ready, remove first on
stop, clean a crashed run's leftovers on start, and follow the Envoy-down policy.

Every change is recorded in ``capture.json`` *before* it is made, so whatever
``kill -9`` interrupts, the next start knows which backend may hold rules and
removes them. A failed apply or verification rolls back to the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from agent.capture.backend import Backend, Snapshot, detect, make_backend
from agent.capture.config import CaptureConfig
from agent.capture.plan import CaptureSettings, DnsCapture, Exempt, RuleSet, plan
from agent.capture.probe import LocalProber, Prober
from agent.capture.record import CaptureRecord, RecordStore
from agent.capture.runner import CaptureError, Runner, SubprocessRunner
from agent.proxy.config import ProxyConfig
from agent.proxy.user import ProxyIdentity, ProxyUserMissing, resolve_proxy_user
from meshcore.clock import Clock, SystemClock

log = logging.getLogger(__name__)
Users = Callable[[ProxyConfig], ProxyIdentity]


def ipv6_available() -> bool:
    """False on kernels booted with ipv6.disable=1, where ip6tables/ip6 nat cannot work."""
    return Path("/proc/net/if_inet6").exists()


def resolve(config: CaptureConfig, users: Users = resolve_proxy_user,
            has_ipv6: Callable[[], bool] = ipv6_available,
            always_exempt: tuple[Exempt, ...] = ()) -> CaptureSettings:
    """Resolve the proxy identity (numeric overrides first, then the user database)
    and drop IPv6 when the kernel has none (nothing can bypass what does not exist)."""
    if config.ipv6 and not has_ipv6():
        log.warning("capture: kernel has no IPv6; capturing IPv4 only")
        config = replace(config, ipv6=False)
    try:
        proxy = users(config.proxy)
    except ProxyUserMissing as exc:
        raise CaptureError(str(exc)) from exc
    return CaptureSettings(config, proxy.uid, proxy.gid, always_exempt)


@contextlib.asynccontextmanager
async def _state_lock(state_dir: Path, timeout: float = 30.0) -> AsyncIterator[None]:
    """One capture change at a time across processes (the daemon and ``capture apply``).

    The wait is a deadline on another process's real work, so it runs on the
    event loop's clock, not the injected one (a virtual clock would expire it)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / "capture.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:  # a read-only or full state directory: say so, no traceback
        raise CaptureError(f"{state_dir / 'capture.lock'}: cannot open the capture lock: "
                           f"{exc.strerror or exc}") from None
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if loop.time() > deadline:
                    raise CaptureError(f"{state_dir / 'capture.lock'}: another mesh-agent "
                                       f"process has held it for {timeout:g}s") from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def digest(snapshot: Snapshot) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CaptureStatus:
    record: CaptureRecord | None
    installed: Snapshot
    matches_record: bool
    matches_plan: bool | None  # None: no usable config to compare with
    plan_error: str | None = None


class CaptureController:
    """Owns capture for one agent. Not thread-safe; call from one event loop."""

    def __init__(self, config: CaptureConfig | None, *, state_dir: Path,
                 always_exempt: tuple[Exempt, ...] = (),
                 runner: Runner | None = None, prober: Prober | None = None,
                 users: Users = resolve_proxy_user,
                 has_ipv6: Callable[[], bool] = ipv6_available,
                 clock: Clock | None = None,
                 owner: str = "mesh-agent daemon") -> None:
        self._config = config
        self._exempt = always_exempt
        self._store = RecordStore(state_dir)
        self._state_dir = state_dir
        self.runner: Runner = runner or SubprocessRunner()
        self._prober = prober or LocalProber()
        self._users = users
        self._has_ipv6 = has_ipv6
        self._clock = clock or SystemClock()
        self._owner = owner
        self._lock = asyncio.Lock()
        self._dns: DnsCapture | None = None
        self._down_since: float | None = None  # monotonic; set while fail-open is pending
        self.failed_open = False

    # -- planning (no I/O beyond the user database) ----------------------------
    def plan(self) -> RuleSet:
        if self._config is None:
            raise CaptureError("no capture configuration")
        settings = resolve(self._config, self._users, self._has_ipv6, self._exempt)
        return plan(replace(settings, dns=self._dns))

    def reconfigure(self, config: CaptureConfig) -> None:
        """New config; takes effect on the next ``apply`` (tests and benchmarks
        use it; the daemon's SIGHUP does not change capture)."""
        self._config = config

    @property
    def always_exempt(self) -> tuple[Exempt, ...]:
        return self._exempt

    def exempt(self, destinations: tuple[Exempt, ...]) -> None:
        """The always-direct destinations (the registrar), resolved by the caller;
        take effect on the next ``apply``."""
        self._exempt = destinations

    @property
    def dns_capture(self) -> DnsCapture | None:
        return self._dns

    def capture_dns(self, dns: DnsCapture | None) -> None:
        """Redirect the app's DNS to the DNS proxy (None: leave DNS alone); takes
        effect on the next ``apply``. The DNS guard turns it off when the proxy
        stops answering, so resolution never depends on a dead proxy."""
        self._dns = dns

    async def choose_backend(self) -> tuple[str, str]:
        """(backend, "recorded"|"configured"|"detected") that ``apply`` would use now."""
        record = self._store.load()
        name, source = await self._choose_backend(record)
        return name, "recorded" if record and record.backend == name else source

    async def _choose_backend(self, record: CaptureRecord | None) -> tuple[str, str]:
        wanted = self._config.backend if self._config else "auto"
        if record and wanted in ("auto", record.backend):
            return record.backend, record.backend_source  # chosen once, never re-detected
        if wanted != "auto":
            return wanted, "configured"
        return await detect(self.runner), "detected"

    def _save(self, record: CaptureRecord) -> CaptureRecord:
        stamped = CaptureRecord(**{**record.__dict__,
                                   "updated_at": self._clock.now().isoformat(timespec="seconds")})
        self._store.save(stamped)
        return stamped

    # -- lifecycle ---------------------------------------------------------------
    async def apply(self) -> CaptureRecord:
        """Install (or replace) capture from the current config, verified; or roll back."""
        async with self._lock, _state_lock(self._state_dir):
            return await self._apply()

    async def _apply(self) -> CaptureRecord:
        config = self._config
        if config is None or not config.enabled:
            await self._remove()
            record = self._store.load()
            return record or CaptureRecord(backend="", backend_source="", phase="removed")
        ruleset = self.plan()
        record = self._store.load()
        name, source = await self._choose_backend(record)
        if record and record.backend != name and record.phase != "removed":
            await self._remove()  # explicit backend change: undo the old one first
            record = self._store.load()
        backend = make_backend(name, self.runner)
        created = record.created_tables if record and record.phase != "removed" else (
            await backend.absent_tables((4, 6)))
        want = backend.expected(ruleset)
        record = self._save(CaptureRecord(
            backend=name, backend_source=source, phase="applying",
            families=tuple(f.family for f in ruleset.families), created_tables=created,
            applied=want, plan_digest=digest(want), owner=f"{self._owner} (pid {os.getpid()})"))
        try:
            await backend.apply(ruleset)
            await self._verify(backend, ruleset, want)
        except BaseException as exc:
            log.error("capture apply failed, rolling back to baseline: %s", exc)
            await asyncio.shield(self._rollback(backend, record))
            raise
        record = self._save(record.with_phase("applied"))
        log.info("capture applied with %s (%s)", name, record.plan_digest)
        return record

    async def _verify(self, backend: Backend, ruleset: RuleSet, want: Snapshot) -> None:
        got = await backend.installed(tuple(f.family for f in ruleset.families))
        if got != want:
            keys = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise CaptureError(f"{backend.name}: rules read back differ from the plan in {keys}")
        if self._config is not None and self._config.probe:
            # Each family's probe is its own connection: made side by side.
            # Read-only: a failure needs no care for the other still running.
            results = await asyncio.gather(*(self._prober.probe(p) for p in ruleset.probes))
            for probe, result in zip(ruleset.probes, results, strict=True):
                if not result.ok:
                    raise CaptureError(f"{backend.name}: probe failed: {result.detail}")
                log.info("capture probe IPv%d: %s", probe.family, result.detail)

    async def _rollback(self, backend: Backend, record: CaptureRecord) -> None:
        try:
            await backend.remove(record.created_tables)
        except CaptureError as exc:
            log.error("capture rollback incomplete (record kept as %r): %s", record.phase, exc)
            return
        self._save(record.with_phase("removed", applied={}, plan_digest=""))

    async def remove(self) -> CaptureRecord | None:
        """Remove what the record says is ours. Needs no config; keeps the backend choice."""
        async with self._lock, _state_lock(self._state_dir):
            return await self._remove()

    async def _remove(self) -> CaptureRecord | None:
        record = self._store.load()
        if record is None:
            return None
        backend = make_backend(record.backend, self.runner)
        if record.phase != "removed" or await backend.installed():
            record = self._save(record.with_phase("removing"))
            await backend.remove(record.created_tables)
            left = await backend.installed()
            if left:
                raise CaptureError(f"{backend.name}: still installed after removal: {sorted(left)}")
            record = self._save(record.with_phase("removed", applied={}, plan_digest=""))
            log.info("capture removed (%s)", backend.name)
        return record

    async def reconcile_on_start(self) -> None:
        """Clean up whatever a crashed or killed run left; ``apply`` comes after Envoy is ready."""
        async with self._lock, _state_lock(self._state_dir):
            record = self._store.load()
            if record is not None and record.phase != "removed":
                log.warning("capture: previous run left phase %r; removing before re-applying",
                            record.phase)
            await self._remove()

    async def repair_drift(self) -> bool:
        """Re-apply if our live rules no longer match the record (e.g. a firewalld
        reload flushed them). For a periodic check in the daemon; True if repaired."""
        status = await self.status()
        if status.record is None or status.record.phase != "applied" or status.matches_record:
            return False
        log.warning("capture: live rules drifted from what was applied; re-applying")
        await self.apply()
        return True

    async def status(self) -> CaptureStatus:
        record = self._store.load()
        if record is None:
            return CaptureStatus(None, {}, True, None)
        installed = await make_backend(record.backend, self.runner).installed()
        matches_plan: bool | None = None
        error = None
        try:
            if self._config is not None and self._config.enabled:
                want = make_backend(record.backend, self.runner).expected(self.plan())
                matches_plan = installed == want
            elif self._config is not None:
                matches_plan = not installed
        except CaptureError as exc:
            error = str(exc)
        return CaptureStatus(record, installed, installed == record.applied, matches_plan, error)

    # -- Envoy-down policy ----------------------------------------------------------
    # No background task: the caller (the daemon's watch loop) polls
    # ``fail_open_if_due`` and awaits every change, so no failure goes unseen.
    def proxy_down(self) -> None:
        """Envoy stopped answering. Fail-closed keeps capture (apps get fast RSTs);
        fail-open removes it once Envoy has stayed down for ``fail_open_after``."""
        config = self._config
        if config is None or config.envoy_down_policy != "fail-open":
            return
        if self._down_since is None and not self.failed_open:
            self._down_since = self._clock.monotonic()

    async def fail_open_if_due(self) -> bool:
        """Remove capture if Envoy has been down for ``fail_open_after``; True if it did."""
        config = self._config
        if config is None or self._down_since is None:
            return False
        down_for = self._clock.monotonic() - self._down_since
        if down_for < config.fail_open_after:
            return False
        log.warning("capture: proxy down for %gs; removing capture (fail-open)", down_for)
        await self.remove()
        self._down_since = None
        self.failed_open = True
        return True

    async def proxy_up(self) -> None:
        """Envoy is ready again: drop a pending fail-open, re-apply if we failed open."""
        self._down_since = None
        if self.failed_open:
            await self.apply()
            self.failed_open = False
