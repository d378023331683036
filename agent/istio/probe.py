"""One TLS handshake with istiod, made only to explain a failure gRPC reports
as UNAVAILABLE: is istiod unreachable (retry) or untrusted (the wrong
root-cert.pem, a configuration error)?"""

from __future__ import annotations

import asyncio
import contextlib
import ssl


def client_context(root_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    # Verify as gRPC's BoringSSL does; Python 3.13's extra RFC 5280 strictness
    # would call a chain gRPC accepts untrusted.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def tls_verify_error(ip: str, port: int, name: str, root_pem: bytes, *,
                           timeout: float) -> str | None:
    """The verification error for ``name`` at ``ip:port``, or None (verified or unreachable)."""
    try:
        ctx = client_context(root_pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"root-cert.pem does not load: {exc}"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(ip, port, ssl=ctx, server_hostname=name), timeout)
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    except (OSError, TimeoutError):
        return None
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return None
