"""The registrar's TLS context: TLS 1.3 only, optional client certificates
verified by OpenSSL against our CA, and no session resumption.

Resumption would let a client skip presenting (and OpenSSL skip verifying) its
chain, so an expired certificate could keep renewing over a resumed session.
TLS 1.2 resumes by session ID from OpenSSL's server-side cache, which Python's
``ssl`` module cannot switch off; TLS 1.3 resumes only through tickets, and
``num_tickets = 0`` with ``OP_NO_TICKET`` issues none. Serving TLS 1.3 alone is
therefore the supported way to make every connection a full handshake. Every
agent (Python's ``ssl`` on OpenSSL 1.1.1 or later) speaks TLS 1.3.
"""

from __future__ import annotations

import ssl

from registrar.config import RegistrarConfig


def tls_context(config: RegistrarConfig, verify_pem: str | None = None) -> ssl.SSLContext:
    """``verify_pem``: the roots and intermediates client certificates may chain to
    (during a CA rotation, both CAs'); default: the configured roots and chain."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # Roots plus our intermediates, so an agent that sends only its leaf still verifies.
    if verify_pem is not None:
        ctx.load_verify_locations(cadata=verify_pem)
    else:
        ctx.load_verify_locations(cafile=str(config.ca.roots))
        ctx.load_verify_locations(cafile=str(config.ca.chain))
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx
