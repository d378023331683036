"""TLS termination that says why it refuses a handshake.

The event loop's own TLS layer (uvloop's, and asyncio's alike) drops the
connection when a handshake fails, discarding the TLS alert OpenSSL has just
written and logging nothing. A client whose certificate comes from a foreign CA
then sees a bare EOF after its request, and the operator sees nothing at all.

``RefusingTls`` is asyncio's own ``SSLProtocol`` (pure Python, it runs on any
loop's transports) with one difference: when the handshake fails it first
sends what OpenSSL wrote (the alert: unknown_ca, certificate_expired, ...) and
logs one line naming the cause, a fixed word from OpenSSL, never the
client's bytes, within a ``LogBudget`` per cause.

Cost: asyncio's TLS layer is pure Python, uvloop's is Cython; on the bootstrap
benchmark the difference was about 10 % CPU per bootstrap.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto

from registrar.api.logbudget import LogBudget

log = logging.getLogger("registrar.http")

# OpenSSL's X509_V_ERR_* codes that mean "not signed by a CA we trust".
_UNKNOWN_CA = {2, 18, 19, 20, 21}
_BY_CODE = {9: "certificate_not_yet_valid", 10: "certificate_expired"}
# The client left or stalled: nothing to tell it, nothing worth a line.
_SILENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def cause(exc: BaseException) -> str | None:
    """A fixed word for a failed handshake, or None when it is no one's fault."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNKNOWN_CA:
            return "client certificate unknown_ca"
        return f"client certificate {_BY_CODE.get(code, f'bad_certificate (verify code {code})')}"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _SILENT):
        return f"tls {str(exc.reason or 'error').lower()}"
    return None


class RefusingTls(sslproto.SSLProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, app: asyncio.BaseProtocol,
                 context: ssl.SSLContext, *, handshake_timeout: float,
                 log_budget: LogBudget | None) -> None:
        # No waiter: nothing awaits the handshake (asyncio's stubs ask for a Future,
        # whose exception would then go unretrieved on every refused handshake).
        super().__init__(loop, app, context, None, server_side=True,  # type: ignore[arg-type]
                         ssl_handshake_timeout=handshake_timeout)  # type: ignore[arg-type]
        self._log_budget = log_budget

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            why = cause(handshake_exc)
            if why is not None:
                # The alert OpenSSL wrote, before the close. A private method of
                # SSLProtocol (3.11-3.13): test_foreign_ca.py fails loudly if it goes,
                # and a Python without it still refuses and logs, only with no alert.
                flush = getattr(self, "_process_outgoing", None)
                if flush is not None:
                    flush()
                self._report(why)
        super()._on_handshake_complete(handshake_exc)

    def _report(self, why: str) -> None:
        suffix = "" if self._log_budget is None else self._log_budget.take(f"tls:{why}")
        if suffix is None:
            return
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        remote = peer[0] if isinstance(peer, tuple) else "-"
        # A certificate refused is someone trying to be a workload; a failed handshake
        # otherwise is mostly scanners and plain-HTTP probes.
        level = logging.WARNING if why.startswith("client certificate") else logging.INFO
        log.log(level, "TLS handshake from %s refused: %s (alert sent)%s", remote, why, suffix)
