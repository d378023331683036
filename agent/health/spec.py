"""The readiness probe as the registrar's settings carry it (Istio's field names).

``httpGet {path, port}``, ``tcpSocket {port}`` or ``exec {command}``, exactly
one, with ``periodSeconds``, ``timeoutSeconds``, ``successThreshold`` and
``failureThreshold`` (Kubernetes' defaults 10, 1, 1, 3). The settings come over
the network, so every field is checked and a bad one is a ``ProbeSpecError``
with the key named, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("httpGet", "tcpSocket", "exec")


class ProbeSpecError(ValueError):
    """``key`` is the dotted field, ``reason`` machine-readable."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"probe.{key}: {message}")
        self.key = key
        self.reason = "bad_probe"


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # one of KINDS
    port: int | None = None
    path: str = "/"
    command: tuple[str, ...] = ()
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def _int(doc: Mapping[str, Any], key: str, default: int, low: int, high: int, *,
         where: str = "") -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProbeSpecError(where + key, f"{value!r} is not an integer in {low}..{high}")
    return value


def _port(body: Any, kind: str) -> int:
    if not isinstance(body, Mapping):
        raise ProbeSpecError(kind, "must be an object")
    if "port" not in body:
        raise ProbeSpecError(f"{kind}.port", "is required")
    return _int(body, "port", 0, 1, 65535, where=f"{kind}.")


def parse_probe(doc: Any) -> ProbeSpec:
    if not isinstance(doc, Mapping):
        raise ProbeSpecError("", "must be an object")
    kinds = [k for k in KINDS if k in doc]
    if len(kinds) != 1:
        raise ProbeSpecError("", f"needs exactly one of {', '.join(KINDS)}, got {kinds}")
    kind = kinds[0]
    period = float(_int(doc, "periodSeconds", 10, 1, 3600))
    timeout = float(_int(doc, "timeoutSeconds", 1, 1, 3600))
    successes = _int(doc, "successThreshold", 1, 1, 1000)
    failures = _int(doc, "failureThreshold", 3, 1, 1000)
    body = doc[kind]
    port, path, command = None, "/", ()
    if kind == "exec":
        raw = body.get("command") if isinstance(body, Mapping) else None
        if not isinstance(raw, list) or not raw or not all(isinstance(c, str) and c for c in raw):
            raise ProbeSpecError("exec.command", "must be a non-empty list of strings")
        command = tuple(raw)
    else:
        port = _port(body, kind)
    if kind == "httpGet":
        path = body.get("path", "/")
        if not isinstance(path, str) or not path.startswith("/") or any(
                c in path for c in " \r\n\t"):
            raise ProbeSpecError("httpGet.path", f"{path!r} is not an absolute URL path")
    return ProbeSpec(kind, port=port, path=path, command=command, period=period,
                     timeout=timeout, success_threshold=successes, failure_threshold=failures)
