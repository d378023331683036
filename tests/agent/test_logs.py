"""Secrets never reach a log line: by construction (Secret) and by the scrubber."""

from __future__ import annotations

import io
import logging

from agent.attest.base import Evidence
from agent.daemon.logs import KeyValueFormatter, ScrubFilter, scrub
from agent.identity.keys import generate_key, key_pem
from meshcore.secret import Secret


def test_secret_never_prints() -> None:
    secret = Secret("s3cr3t-value")
    ev = Evidence(type="join_token", fields={"token": secret})
    for text in (str(secret), repr(secret), f"{secret}", repr(ev), str(ev), f"{ev!r}"):
        assert "s3cr3t-value" not in text
    assert ev.wire()["token"] == "s3cr3t-value"


def test_scrubber_masks_keys_jwts_and_bearer_values() -> None:
    pem = key_pem(generate_key("ecdsa-p256")).decode()
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4eHh4eHh4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    text = f"key {pem} jwt {jwt} header Authorization: Bearer abcdefghijklmnop"
    out = scrub(text)
    assert "PRIVATE KEY" not in out and pem.splitlines()[1] not in out
    assert jwt not in out and "abcdefghijklmnop" not in out


def test_log_records_are_scrubbed_including_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(ScrubFilter())
    logger = logging.getLogger("test.scrub")
    logger.addHandler(handler)
    logger.propagate = False
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3OCJ9.c2lnbmF0dXJlc2ln"
    logger.warning("got %s", token, extra={"evidence": token, "secret": Secret("x" * 20)})
    assert token not in stream.getvalue()
    assert "x" * 20 not in stream.getvalue()


def test_journal_handler_sends_without_error() -> None:
    """journal.send formats CODE_LINE as a number: a str there made every journal
    entry fail (found on the real VM). Without a journald socket the entry is
    dropped after formatting, so a type error still shows here."""
    import sys

    from agent.daemon.logs import JournalHandler

    handler = JournalHandler("mesh-agent-test")
    errors: list[object] = []
    handler.handleError = lambda record: errors.append(sys.exc_info()[1])  # type: ignore[method-assign]
    record = logging.LogRecord("agent.test", logging.INFO, __file__, 42, "hello %s", ("x",),
                               None)
    record.spiffe_id = "spiffe://td/ns/a/sa/b"
    handler.emit(record)
    assert errors == []
