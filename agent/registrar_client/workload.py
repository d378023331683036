"""Decoding ``GET /v1/workload/settings`` (docs/api/openapi.yaml ``WorkloadSettings``).

The probe stays a raw mapping here (``agent.health.spec`` checks it); the
name table is checked now, because the DNS proxy answers from it verbatim.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.registrar_client.wire import WireError

MAX_NAMES = 100_000


@dataclass(frozen=True)
class WorkloadSettings:
    spiffe_id: str
    group: str
    probe: Mapping[str, Any] | None
    report_interval: float
    grace: float
    names: Mapping[str, str]  # lower-case hostname (no trailing dot) -> VIP
    xds_port: int | None  # the ADS port on the registrar's host; None: xDS is off


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 253 or not all(
            label and len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
            for label in value.rstrip(".").split(".")):
        raise WireError(f"name table: {str(value)[:80]!r} is not a hostname")
    return value.rstrip(".").lower()


def _names(raw: Any) -> dict[str, str]:
    if not isinstance(raw, list) or len(raw) > MAX_NAMES:
        raise WireError("field 'names' is not a list")
    out: dict[str, str] = {}
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise WireError("name table entry is not an object")
        try:
            vip = str(ipaddress.ip_address(str(entry.get("vip"))))
        except ValueError:
            raise WireError(f"name table: {entry.get('vip')!r} is not an IP address") from None
        out[_hostname(entry.get("hostname"))] = vip
    return out


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise WireError(f"field {key!r} is not a positive number")
    return float(value)


def decode_settings(body: Any) -> WorkloadSettings:
    if not isinstance(body, Mapping):
        raise WireError("body is not a JSON object")
    probe = body.get("probe")
    if probe is not None and not isinstance(probe, Mapping):
        raise WireError("field 'probe' is not an object")
    xds = body.get("xds")
    port: int | None = None
    if xds is not None:
        port = xds.get("port") if isinstance(xds, Mapping) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise WireError("field 'xds.port' is not a port")
    spiffe_id, group = body.get("spiffe_id"), body.get("group")
    if not isinstance(spiffe_id, str) or not isinstance(group, str):
        raise WireError("fields 'spiffe_id' and 'group' must be strings")
    return WorkloadSettings(spiffe_id, group, probe, _number(body, "report_interval_seconds"),
                            _number(body, "grace_seconds"), _names(body.get("names")), port)
