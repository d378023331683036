"""The registrar's TLS context: TLS 1.2+, optional client certificates verified by
OpenSSL against our CA, and no session resumption of any kind.

Resumption would let a client skip presenting (and OpenSSL skip verifying) its
chain. TLS 1.3 tickets are off via ``num_tickets = 0`` and TLS 1.2 tickets via
``OP_NO_TICKET``; TLS 1.2 session-ID resumption uses OpenSSL's server session
cache, which Python does not expose, so it is switched off through
``SSL_CTX_ctrl(SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF)`` in the libssl
that ``_ssl`` is linked with. The pointer is sanity-checked first (the default
mode must read back as SSL_SESS_CACHE_SERVER); if that fails we refuse TLS 1.2
instead, so resumption is never silently possible.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl

from registrar.config import RegistrarConfig

log = logging.getLogger("registrar.tls")

_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_SSL_SESS_CACHE_OFF = 0
_SSL_SESS_CACHE_SERVER = 2


def _disable_session_cache(ctx: ssl.SSLContext) -> bool:
    try:
        ctrl = ctypes.CDLL(_ssl.__file__).SSL_CTX_ctrl
    except (OSError, AttributeError):
        return False
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    # PySSLContext starts with PyObject_HEAD then ``SSL_CTX *ctx``.
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != (
            _SSL_SESS_CACHE_SERVER):
        return False
    ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
    mode: int = ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None)
    return mode == _SSL_SESS_CACHE_OFF


def tls_context(config: RegistrarConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # Roots plus our intermediates, so an agent that sends only its leaf still verifies.
    ctx.load_verify_locations(cafile=str(config.ca.roots))
    ctx.load_verify_locations(cafile=str(config.ca.chain))
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    if not _disable_session_cache(ctx):
        log.warning("cannot switch off the TLS 1.2 session cache here; serving TLS 1.3 only")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx
