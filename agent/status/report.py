"""`mesh-agent status`: asks the running agent, and falls back to what is on disk
when it is not running (so an operator always sees the identity and expiry)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx

from agent.config.model import AgentConfig
from agent.credentials import CredentialStore, StoreError
from agent.state.store import StateError, StateFile
from meshcore.clock import Clock, SystemClock


def _from_daemon(config: AgentConfig) -> dict[str, Any] | None:
    if not config.status.enabled:
        return None
    host = config.status.host
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.status.port}/status"
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    return body if isinstance(body, dict) else None


def _from_disk(config: AgentConfig, now: dt.datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"running": False}
    try:
        creds = CredentialStore(config.state_dir / "credentials").current()
    except StoreError as exc:
        out["error"] = str(exc)
        creds = None
    except PermissionError:
        out["error"] = f"cannot read {config.state_dir} (run as root or the agent's user)"
        creds = None
    if creds is not None:
        out.update(spiffe_id=creds.spiffe_id, serial=creds.serial_hex,
                   generation=creds.generation, not_after=creds.not_after.isoformat(),
                   expires_in_seconds=(creds.not_after - now).total_seconds(),
                   ready=False, phase="stopped" if creds.valid_at(now) else "expired")
    try:
        state = StateFile(config.state_dir / "state.json").load()
        out.update(attestor=state.attestor, rotations=state.rotations,
                   last_success=state.last_success)
    except (StateError, PermissionError):
        pass
    return out


def collect(config: AgentConfig, clock: Clock | None = None) -> dict[str, Any]:
    live = _from_daemon(config)
    if live is not None:
        return {"running": True, **live}
    return _from_disk(config, (clock or SystemClock()).now())


def render_text(report: dict[str, Any]) -> str:
    lines = [f"running:    {'yes' if report.get('running') else 'no'}"]
    for label, key in (("ready", "ready"), ("phase", "phase"), ("identity", "spiffe_id"),
                       ("attestor", "attestor"), ("serial", "serial"),
                       ("expires", "not_after"), ("rotations", "rotations"),
                       ("last ok", "last_success"), ("last error", "last_error"),
                       ("error", "error")):
        if report.get(key) is not None:
            lines.append(f"{label + ':':<11} {report[key]}")
    remaining = report.get("expires_in_seconds")
    if isinstance(remaining, int | float):
        lines.append(f"{'remaining:':<11} {_human(remaining)}")
    offset = report.get("clock_offset_seconds")
    if report.get("clock_skew") and isinstance(offset, int | float):
        lines.append(f"{'clock:':<11} CLOCK SKEW: the registrar is {offset:+.0f}s from this "
                     "host; fix the host's time (NTP)")
    conditions = report.get("conditions") or {}
    for name, ok in conditions.items():
        lines.append(f"{name + ':':<11} {'ok' if ok else 'NOT READY'}")
    return "\n".join(lines)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)


def _human(seconds: float) -> str:
    if seconds < 0:
        return f"EXPIRED {_human(-seconds)} ago"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
