"""Logging: structured journal fields under systemd, ``key=value`` lines on
stderr otherwise, and a last-line-of-defence scrubber on every record.

Secrets are ``meshcore.secret.Secret`` and redact themselves; the scrubber also
masks anything shaped like a private key, a JWT, a bearer value or a metadata
token in case a foreign library puts one in a message. A join token has no
shape to recognise (random URL-safe base64 without a marker), so it relies on
``Secret`` alone: it is wrapped the moment the token file is read.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
                re.S), "<redacted private key>"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "<redacted jwt>"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1<redacted>"),
    (re.compile(r"(?i)(metadata-token[\"':= ]+)[A-Za-z0-9_=-]{8,}"), r"\1<redacted>"),
]


def scrub(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class ScrubFilter(logging.Filter):
    """Formats the message once, scrubbed, and drops the raw args."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        for key, value in extras(record).items():
            if isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_quote(v)}" for k, v in extras(record).items())
        line = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower()} " \
               f"{record.name}: {record.getMessage()}"
        if fields:
            line += f" {fields}"
        if record.exc_info:
            line += "\n" + scrub(self.formatException(record.exc_info))
        return line


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class JournalHandler(logging.Handler):
    """One journal entry per record; ``extra`` keys become upper-case fields."""

    def __init__(self, identifier: str) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send
        self._identifier = identifier

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {k.upper(): str(v) for k, v in extras(record).items()
                      if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", k)}
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + scrub(logging.Formatter().formatException(record.exc_info))
            self._send(message, PRIORITY=str(_priority(record.levelno)),
                       SYSLOG_IDENTIFIER=self._identifier, LOGGER=record.name,
                       CODE_FILE=record.pathname, CODE_LINE=record.lineno,
                       CODE_FUNC=record.funcName, **fields)
        except Exception:
            self.handleError(record)


def _priority(level: int) -> int:
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


def under_journald() -> bool:
    """systemd sets JOURNAL_STREAM when stderr goes to the journal."""
    return "JOURNAL_STREAM" in os.environ


def setup(level: str, *, identifier: str = "mesh-agent") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    out: logging.Handler
    if under_journald():
        out = JournalHandler(identifier)
    else:
        out = logging.StreamHandler(sys.stderr)
        out.setFormatter(KeyValueFormatter())
    out.addFilter(ScrubFilter())
    root.addHandler(out)
    root.setLevel(level.upper())
    # Libraries log request lines (URLs with query strings) at INFO; keep them out.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
