"""``root-cert.pem``: the mesh's root(s), the only anchor istiod is verified against."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

from agent.istio.errors import file_error
from meshcore.config.errors import ConfigError

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_EXPECTED = "PEM certificates (-----BEGIN CERTIFICATE-----), as istioctl writes them"


def parse_roots(data: bytes, path: Path) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for match in _BLOCK.finditer(data):
        line = data.count(b"\n", 0, match.start()) + 1
        if match.group(1) != b"CERTIFICATE":
            raise file_error(path, line, "pem", f"a {match.group(1).decode()} block",
                             _EXPECTED)
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
        except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
            raise file_error(path, line, "pem", "a certificate block that does not parse",
                             _EXPECTED) from None
    if not certs:
        raise file_error(path, 1, "pem", "holds no PEM certificate", _EXPECTED)
    return certs


def read_roots(path: Path) -> tuple[bytes, list[x509.Certificate]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "file", f"cannot read it ({exc.strerror})",
                          _EXPECTED) from None
    return data, parse_roots(data, path)
