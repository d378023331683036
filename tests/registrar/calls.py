"""The API calls registrar tests make; every response is checked against the OpenAPI file."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.registrar import RegistrarProcess
from tests.registrar import spec


def tls(reg: RegistrarProcess, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Verifies like Python 3.13 (Debian 13) does by default, on every Python."""
    ctx = ssl.create_default_context(cafile=str(reg.ca_file))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def client(reg: RegistrarProcess, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=reg.url, verify=tls(reg), timeout=30, **kwargs)


def attest_body(token: str, csr: str, **extra: Any) -> dict[str, Any]:
    return {"evidence": {"type": "join_token", "token": token}, "csr": csr, **extra}


def post(c: httpx.Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = c.post(path, **kwargs)
    return response.status_code, spec.check(response)


def get(c: httpx.Client, path: str) -> tuple[int, Any]:
    response = c.get(path)
    return response.status_code, spec.check(response)


def healthy(reg: RegistrarProcess) -> bool:
    with client(reg) as c:
        status, body = get(c, "/healthz")
    return (status == 200 and body == {"status": "ok", "store": reg.store_kind}
            and reg.running())
