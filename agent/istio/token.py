"""``istio-token``: the service-account JWT istiod's CA accepts for a first certificate.

Held as a ``Secret`` from the moment it is read. We decode (never verify: only
istiod can) its claims to say *why* it will not work before sending it: expired,
wrong audience, no service-account subject.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.istio.errors import file_error
from meshcore.secret import Secret

_EXPECTED = "a JWT (header.payload.signature) as istioctl writes it"


@dataclass(frozen=True)
class IstioToken:
    value: Secret
    subject: str
    audiences: tuple[str, ...]
    expires: dt.datetime | None

    def expired_at(self, now: dt.datetime) -> bool:
        return self.expires is not None and now >= self.expires


def _segment(text: str) -> Any:
    padded = text + "=" * (-len(text) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def parse_token(text: str, path: Path) -> IstioToken:
    raw = text.strip()
    parts = raw.split(".")
    if "\n" in raw or len(parts) != 3 or not all(parts):
        raise file_error(path, 1, "token", "is not a JWT", _EXPECTED)
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
    except (ValueError, UnicodeError, binascii.Error):
        raise file_error(path, 1, "token", "has a header or payload that is not base64 JSON",
                         _EXPECTED) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise file_error(path, 1, "token", "has a header or payload that is not a JSON object",
                         _EXPECTED)
    aud = claims.get("aud", ())
    audiences = (aud,) if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) \
        if isinstance(aud, list) else ()
    exp = claims.get("exp")
    expires = dt.datetime.fromtimestamp(exp, dt.UTC) if isinstance(exp, int | float) \
        and not isinstance(exp, bool) else None
    subject = claims.get("sub") if isinstance(claims.get("sub"), str) else ""
    return IstioToken(Secret(raw), str(subject), audiences, expires)


def read_token(path: Path) -> IstioToken | None:
    """The token, or None when the file is absent (it is only needed for a first certificate)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise file_error(path, 1, "token", "is not ASCII text", _EXPECTED) from None
    except OSError as exc:
        raise file_error(path, 1, "token", f"cannot read it ({exc.strerror})",
                         _EXPECTED) from None
    return parse_token(text, path)
