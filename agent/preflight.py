"""`mesh-agent check`: the preflight an operator (or cloud-init) runs before
enabling the service. Each check says what it looked at and what to fix."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from cryptography import x509

from agent.attest import registry
from agent.config.model import AgentConfig
from agent.registrar_client import RegistrarClient, RegistrarError
from agent.status.health import CLOCK_SKEW_SECONDS
from meshcore.clock import Clock, SystemClock

# No certificate we could have been issued predates this; a clock before it is wrong.
EARLIEST_SANE = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str


def _trust_anchor(config: AgentConfig) -> Result:
    assert config.registrar is not None
    path = config.registrar.ca_file
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        return Result("trust anchor", False, f"{path}: {exc.strerror}")
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        return Result("trust anchor", False, f"{path}: not PEM certificates")
    return Result("trust anchor", True, f"{path}: {len(certs)} certificate(s)")


def _registrar(config: AgentConfig, clock: Clock) -> Result:
    assert config.registrar is not None
    client = RegistrarClient(config.registrar.url, config.registrar.ca_file,
                             timeout=min(config.registrar.timeout, 5.0))
    try:
        asyncio.run(client.bundle())
    except RegistrarError as exc:
        return Result("registrar", False, str(exc))
    if client.last_date is not None:
        offset = (client.last_date - clock.now()).total_seconds()
        if abs(offset) >= CLOCK_SKEW_SECONDS:
            return Result("registrar", False, f"clock skew: the registrar's clock is "
                          f"{offset:+.0f}s from this host's (fix the host's time: NTP)")
    return Result("registrar", True, f"{config.registrar.url} answers over verified TLS")


def _clock(config: AgentConfig, clock: Clock) -> Result:
    now = clock.now()
    if now < EARLIEST_SANE:
        return Result("clock", False, f"system time {now:%Y-%m-%d} is before "
                      f"{EARLIEST_SANE:%Y-%m-%d}; certificates will not verify (is NTP running?)")
    return Result("clock", True, f"{now:%Y-%m-%dT%H:%M:%SZ}")


def _state_dir(config: AgentConfig) -> Result:
    path = config.state_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-"):
            pass
    except OSError as exc:
        return Result("state dir", False, f"{path}: not writable ({exc.strerror})")
    return Result("state dir", True, f"{path} writable")


def _evidence(config: AgentConfig) -> Result:
    if config.attestation.method in ("token", "auto"):
        token = config.attestation.token_file
        if token.exists():
            return Result("evidence", True, f"join token present at {token}")
        creds = config.state_dir / "credentials" / "current"
        if os.path.lexists(creds):
            return Result("evidence", True, "no token, but credentials are on disk (renewal)")
        if config.attestation.method == "token":
            return Result("evidence", False, f"no join token at {token} and no credentials")
    return Result("evidence", True, f"attestation method {config.attestation.method}")


def _metadata(config: AgentConfig) -> Result:
    """Which cloud metadata services answer (auto/cloud methods only)."""
    if config.attestation.method == "token":
        return Result("metadata", True, "not used (attestation.method: token)")
    results = asyncio.run(registry.metadata_status(config.attestation))
    answered = [r.name for r in results if r.answered]
    wanted = config.attestation.method
    detail = ", ".join(f"{r.name} {'answers' if r.answered else 'no answer'} "
                       f"({r.seconds * 1000:.0f} ms)" for r in results)
    if wanted != "auto" and wanted not in answered:
        return Result("metadata", False, f"attestation.method is {wanted} but {detail}")
    return Result("metadata", True, detail or "no cloud attestors")


def _istio(config: AgentConfig) -> list[Result]:
    from agent.istio import preflight

    assert config.istio is not None
    has_creds = os.path.lexists(config.state_dir / "credentials" / "current")
    return [Result(f.name, True, f"{f.detail}; not needed: credentials on disk renew over mTLS")
            if f.first_only and has_creds else Result(f.name, f.ok, f.detail)
            for f in preflight.run(config.istio)]


def run_checks(config: AgentConfig, clock: Clock | None = None) -> list[Result]:
    clock_check = partial(_clock, clock=clock or SystemClock())
    if config.istio is not None:
        # token_source: registrar also needs the registrar and its evidence.
        extra = [_trust_anchor(config), _evidence(config), _registrar(
            config, clock=clock or SystemClock())] if config.registrar is not None else []
        return [clock_check(config), _state_dir(config), *_istio(config), *extra]
    checks: tuple[Callable[[AgentConfig], Result], ...] = (
        _trust_anchor, clock_check, _state_dir, _evidence, _metadata,
        partial(_registrar, clock=clock or SystemClock()))
    return [check(config) for check in checks]
