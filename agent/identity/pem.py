"""PEM armour (RFC 7468) for DER, with nothing but the standard library: the key
helper and the daemon both use it, and neither may pay for more."""

from __future__ import annotations

import base64


def pem_block(label: str, der: bytes) -> bytes:
    """``der`` as one PEM block: ``-----BEGIN <label>-----``, base64 in lines of 64
    characters, ``-----END <label>-----`` and a final newline."""
    body = base64.b64encode(der)
    lines = b"".join(body[i:i + 64] + b"\n" for i in range(0, len(body), 64))
    armour = label.encode("ascii")
    return b"-----BEGIN " + armour + b"-----\n" + lines + b"-----END " + armour + b"-----\n"
