"""Every registrar failure, classified into the action the agent takes.

Foreign exceptions (socket, ssl, json) are translated here, at the boundary,
into ``RegistrarError``; nothing above this module guesses from message text.
"""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from agent.registrar_client.http import Response

Action = Literal["retry", "reattest", "fatal"]
ACTIONS: tuple[Action, ...] = ("retry", "reattest", "fatal")
# Reasons whose action the agent knows itself, whatever the body says: a newer
# certificate of ours has renewed, so renewing with this one can never work again.
SUPERSEDED = "certificate_superseded"
KNOWN_ACTIONS: dict[str, Action] = {SUPERSEDED: "reattest"}


class RegistrarError(Exception):
    """A failed registrar call: ``action`` says what to do, ``reason`` says why."""

    def __init__(self, action: Action, reason: str, message: str, *, url: str,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{url}: {reason}: {message}")
        self.action: Action = action
        self.reason = reason
        self.message = message
        self.url = url
        self.status = status
        self.retry_after = retry_after


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# OpenSSL X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED.
_TIME_CODES = {9: "not yet valid", 10: "expired"}


def from_transport(exc: BaseException, url: str, *, ca_file: str, mtls: bool) -> RegistrarError:
    """Translate a connection-level failure."""
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _TIME_CODES:
        # Judged by our clock: a wrong clock here is passing, not a wrong anchor.
        return RegistrarError(
            "retry", "clock_skew",
            f"the registrar's certificate is {_TIME_CODES[cause.verify_code]} by this host's "
            f"clock ({cause.verify_message}); check the host's time (NTP)", url=url)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return RegistrarError(
            "fatal", "registrar_untrusted",
            f"the registrar's certificate does not verify against the pinned trust anchor "
            f"{ca_file} ({cause.verify_message}); check registrar.url and registrar.ca_file",
            url=url)
    if cause is not None and mtls and "alert" in str(cause).lower():
        # The registrar's TLS layer refused our client certificate (expired,
        # unknown CA): renewing with it will not work, new evidence might.
        return RegistrarError("reattest", "client_cert_rejected",
                              f"the registrar refused our client certificate ({cause.reason})",
                              url=url)
    if isinstance(exc, TimeoutError):
        return RegistrarError("retry", "timeout", "no answer in time", url=url)
    return RegistrarError("retry", "unreachable", f"{type(exc).__name__}: {exc}", url=url)


def from_response(response: Response) -> RegistrarError:
    """Translate a non-200 answer, preferring the registrar's own reason and action."""
    url = response.url
    retry_after = _retry_after(response.headers.get("retry-after"))
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        action = KNOWN_ACTIONS.get(body["reason"], body.get("action"))
        if action not in ACTIONS:
            action = _default_action(response.status)
        if retry_after is None and isinstance(body.get("retry_after"), int | float):
            retry_after = float(body["retry_after"])
        message = body.get("message") if isinstance(body.get("message"), str) else ""
        return RegistrarError(action, body["reason"], str(message)[:500], url=url,
                              status=response.status, retry_after=retry_after)
    return RegistrarError(_default_action(response.status), f"http_{response.status}",
                          "the registrar answered without an error body", url=url,
                          status=response.status, retry_after=retry_after)


def _default_action(status: int) -> Action:
    return "retry" if status == 429 or status >= 500 else "fatal"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
