"""Decoding the registrar's success bodies (docs/api/openapi.yaml ``Credentials``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Issued:
    spiffe_id: str
    chain_pem: bytes
    bundle_pem: bytes
    not_after: dt.datetime
    renew_after: dt.datetime
    mesh: Mapping[str, Any]


class WireError(ValueError):
    pass


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise WireError(f"field {key!r} missing or not a string")
    return value


def _time(body: Mapping[str, Any], key: str) -> dt.datetime:
    text = _text(body, key)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise WireError(f"field {key!r} is not an RFC 3339 time") from exc
    if value.tzinfo is None:
        raise WireError(f"field {key!r} has no time zone")
    return value


def decode_issued(body: Any) -> Issued:
    if not isinstance(body, Mapping):
        raise WireError("body is not a JSON object")
    mesh = body.get("mesh")
    if not isinstance(mesh, Mapping):
        raise WireError("field 'mesh' missing or not an object")
    spiffe_id = _text(body, "spiffe_id")
    if not spiffe_id.startswith("spiffe://"):
        raise WireError("field 'spiffe_id' is not a SPIFFE ID")
    return Issued(
        spiffe_id=spiffe_id,
        chain_pem=_text(body, "cert_chain").encode(),
        bundle_pem=_text(body, "trust_bundle").encode(),
        not_after=_time(body, "not_after"),
        renew_after=_time(body, "renew_after"),
        mesh=dict(mesh),
    )
