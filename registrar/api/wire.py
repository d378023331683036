"""Request parsing under bounds (before any authentication) and response bodies.

Body size is checked against Content-Length and again while reading, the
content type must be JSON, and parse cost is bounded by the size limit and a
nesting cap; anything else is ``Rejected`` with the reason the OpenAPI file lists.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from registrar.ca.csr import CheckedCsr, check_csr
from registrar.display import has_unsafe
from registrar.rejections import Rejected

MAX_DEPTH = 8
MAX_ADDRESSES = 64
MAX_HOSTNAME = 253
_ATTEST_KEYS = {"evidence", "csr", "challenge", "hostname", "addresses"}
_RENEW_KEYS = {"csr", "hostname", "addresses"}


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > limit:
        raise Rejected("body_too_large", f"body is {length} bytes; the limit is {limit}")
    if request.content_type != "application/json":
        raise Rejected("unsupported_media_type",
                       f"content type {request.content_type!r}; allowed: application/json")
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(limit + 1 - total):
        total += len(chunk)
        chunks.append(chunk)
        if total > limit:  # chunked or lying Content-Length: stop reading at the limit
            raise Rejected("body_too_large", f"body exceeds {limit} bytes")
    return parse_json(b"".join(chunks))


def parse_json(body: bytes) -> dict[str, Any]:
    """A request body (already within the size limit) -> a JSON object, or ``Rejected``."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise Rejected("bad_request", "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Rejected("bad_request", "body must be a JSON object")
    if _depth(value) > MAX_DEPTH:
        raise Rejected("bad_request", f"JSON nested deeper than {MAX_DEPTH}")
    try:  # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 store can hold
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise Rejected("bad_request", "a string holds a lone surrogate (not Unicode text)"
                       ) from None
    return value


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def only_keys(body: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Rejected("bad_request", f"unknown field {unknown[0][:64]!r}; allowed: "
                       + ", ".join(sorted(allowed)))
    missing = sorted(required - set(body))
    if missing:
        raise Rejected("bad_request", f"missing field {missing[0]!r}")


def string_field(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise Rejected("bad_request", f"{name!r} must be a string")
    return value


def host_fields(body: Mapping[str, Any]) -> tuple[str | None, list[str] | None]:
    hostname = body.get("hostname")
    if hostname is not None and (not isinstance(hostname, str) or len(hostname) > MAX_HOSTNAME
                                 or has_unsafe(hostname)):
        raise Rejected("bad_request", f"'hostname' must be a string of <= {MAX_HOSTNAME} "
                       "printable chars")
    addresses = body.get("addresses")
    if addresses is not None and (
        not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES
        or not all(isinstance(a, str) and len(a) <= 64 and not has_unsafe(a)
                   for a in addresses)
    ):
        raise Rejected("bad_request",
                       f"'addresses' must be a list of <= {MAX_ADDRESSES} address strings")
    return hostname, addresses


@dataclass(frozen=True)
class AttestRequest:
    """An attest body whose shape and CSR passed; the evidence is the verifier's."""

    evidence: Mapping[str, Any]
    evidence_type: str
    csr: CheckedCsr
    challenge: str | None
    hostname: str | None
    addresses: list[str] | None


@dataclass(frozen=True)
class RenewRequest:
    csr: CheckedCsr
    hostname: str | None
    addresses: list[str] | None


def parse_attest(body: Mapping[str, Any]) -> AttestRequest:
    """Everything about an attest body that needs no store and no key: pure, so
    the fuzz targets run exactly what the server runs."""
    only_keys(body, _ATTEST_KEYS, {"evidence", "csr"})
    evidence = body["evidence"]
    if not isinstance(evidence, dict) or not isinstance(evidence.get("type"), str):
        raise Rejected("bad_request", "'evidence' must be an object with a string 'type'")
    hostname, addresses = host_fields(body)
    csr = check_csr(string_field(body, "csr"))
    raw = body.get("challenge")
    return AttestRequest(evidence=evidence, evidence_type=evidence["type"], csr=csr,
                         challenge=raw if isinstance(raw, str) else None,
                         hostname=hostname, addresses=addresses)


def parse_renew(body: Mapping[str, Any]) -> RenewRequest:
    only_keys(body, _RENEW_KEYS, {"csr"})
    hostname, addresses = host_fields(body)
    return RenewRequest(csr=check_csr(string_field(body, "csr")), hostname=hostname,
                        addresses=addresses)


def timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_response(exc: Rejected) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return web.json_response(exc.body(), status=exc.status, headers=headers)
