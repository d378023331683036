"""Typed, self-reporting access to one section of the merged configuration.

Every getter records the key it read; ``finish()`` turns any key nobody read
into an error that lists the keys the section allows, so typos never pass
silently. Every error names the file that set the key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshcore.config.errors import ConfigError, ConfigWarning, shown
from meshcore.config.source import Source

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

def parse_duration(text: str) -> float:
    """``"90s"``, ``"5m"``, ``"24h"``, ``"250ms"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]

class Section:
    """One mapping in the config, addressed by its dotted path."""

    def __init__(self, source: Source, path: str = "", data: Mapping[str, Any] | None = None):
        self._source = source
        self._path = path
        self._data: Mapping[str, Any] = source.data if data is None else data
        self._read: set[str] = set()

    # -- plumbing -------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def error(self, name: str, problem: str, allowed: str = "") -> ConfigError:
        dotted = self.key(name)
        return ConfigError(self._source.origin(dotted), dotted, problem, allowed)

    def warning(self, name: str, problem: str, instead: str = "") -> ConfigWarning:
        """A warning about ``name`` that names the file that set it."""
        dotted = self.key(name)
        return ConfigWarning(self._source.origin(dotted), dotted, problem, instead)

    def has(self, name: str) -> bool:
        return name in self._data

    def keys(self) -> list[str]:
        """The keys present, for sections whose keys are names (e.g. one per service)."""
        return [str(k) for k in self._data]

    @property
    def source(self) -> Source:
        """The merged configuration this section reads from (for sub-readers)."""
        return self._source

    def raw(self, name: str) -> Any:
        """The value as loaded (marks the key as read); for shapes no getter covers."""
        self._read.add(name)
        return self._data.get(name)

    def section(self, name: str) -> Section:
        raw = self.raw(name)
        if raw is None:
            return Section(self._source, self.key(name), {})
        if not isinstance(raw, Mapping):
            raise self.error(name, f"is a {type(raw).__name__}", "a mapping")
        return Section(self._source, self.key(name), raw)

    def sections(self, name: str, allowed: str) -> tuple[Section, ...]:
        """A list of mappings, each as a ``Section`` addressed ``name[i]``."""
        raw = self.raw(name)
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.error(name, f"is a {type(raw).__name__}", allowed)
        items = []
        for index, item in enumerate(raw):
            key = f"{name}[{index}]"
            if not isinstance(item, Mapping):
                raise self.error(key, f"is a {type(item).__name__}", allowed)
            items.append(Section(self._source, self.key(key), item))
        return tuple(items)

    def finish(self) -> None:
        """Reject keys that no getter asked for."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            allowed = ", ".join(sorted(self._read)) or "no keys"
            raise self.error(unknown[0], "unknown key", allowed)

    # -- typed getters --------------------------------------------------------
    def text(self, name: str, default: str | None = None, *, choices: Sequence[str] = ()) -> str:
        raw = self.raw(name)
        if raw is None:
            if default is None:
                raise self.error(name, "is required", "|".join(choices) or "a string")
            return default
        if not isinstance(raw, str) or not raw:
            raise self.error(name, f"must be a non-empty string, got {shown(raw)}",
                             "|".join(choices) or "a string")
        if choices and raw not in choices:
            raise self.error(name, f"{shown(raw)} is not allowed", "|".join(choices))
        return raw

    def flag(self, name: str, default: bool) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        if not isinstance(raw, bool):
            raise self.error(name, f"must be true or false, got {shown(raw)}", "true|false")
        return raw

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int) or not minimum <= raw <= maximum:
            raise self.error(name, f"got {shown(raw)}", f"an integer {minimum}..{maximum}")
        return raw

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not (
            minimum <= raw <= maximum
        ):
            raise self.error(name, f"got {shown(raw)}", f"a number {minimum}..{maximum}")
        return float(raw)

    def duration(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        """Seconds, from ``30s``/``5m``/``24h``/``250ms`` or a bare number."""
        raw = self.raw(name)
        allowed = f"a duration like 30s, 5m, 2h between {minimum:g}s and {maximum:g}s"
        if raw is None:
            return default
        try:
            seconds = float(raw) if isinstance(raw, int | float) and not isinstance(
                raw, bool) else parse_duration(str(raw))
        except ValueError:
            raise self.error(name, f"{shown(raw)} is not a duration", allowed) from None
        if not minimum <= seconds <= maximum:
            raise self.error(name, f"{shown(raw)} is out of range", allowed)
        return seconds

    def path(self, name: str, default: str | None = None) -> Path:
        value = self.text(name, default)
        allowed = "an absolute path without NUL characters"
        if not value.startswith("/"):
            raise self.error(name, f"{shown(value)} is not an absolute path", allowed)
        # The system cannot name such a file: every open of it raises ValueError, not
        # OSError (found by tests/fuzz, agent_config, through istio.dir).
        if "\0" in value:
            raise self.error(name, f"{shown(value)} holds a NUL character", allowed)
        return Path(value)

    def url(self, name: str, default: str | None = None, *, schemes: Sequence[str]) -> str:
        value = self.text(name, default)
        try:
            # urlsplit raises on a malformed [IPv6] host (found by tests/fuzz,
            # agent_config); .port raises on a port out of range, so read it now.
            parts = urlsplit(value)
            _ = parts.port
        except ValueError:
            raise self.error(name, f"{shown(value)} is not a usable URL",
                             f"a {'|'.join(schemes)} URL with a host") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise self.error(name, f"{shown(value)} is not a usable URL",
                             f"a {'|'.join(schemes)} URL with a host")
        return value.rstrip("/")

    def str_list(self, name: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        raw = self.raw(name)
        if raw is None:
            return tuple(default)
        if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
            raise self.error(name, f"got {shown(raw)}", "a list of strings")
        return tuple(raw)

    def port_list(self, name: str, default: Sequence[int] = ()) -> tuple[int, ...]:
        raw = self.raw(name)
        if raw is None:
            return tuple(default)
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = [raw]
        if isinstance(raw, str):
            raw = [p.strip() for p in raw.split(",") if p.strip()]
        ports: list[int] = []
        for item in raw if isinstance(raw, list) else [raw]:
            try:
                port = int(item)
            except (TypeError, ValueError):
                port = -1
            if isinstance(item, bool) or not 1 <= port <= 65535:
                raise self.error(name, f"{shown(item)} is not a port", "TCP ports 1..65535")
            ports.append(port)
        return tuple(ports)

    def cidr_list(self, name: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        values = self.str_list(name, default)
        out = []
        for value in values:
            try:
                out.append(str(ipaddress.ip_network(value, strict=False)))
            except ValueError:
                raise self.error(name, f"{shown(value)} is not a CIDR",
                                 "IPv4/IPv6 networks like 10.0.0.0/8 or fd00::/8") from None
        return tuple(out)

    def host_port(self, name: str, default: str) -> tuple[str, int]:
        value = self.text(name, default)
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            number = -1
        if not sep or not 1 <= number <= 65535:
            raise self.error(name, f"{shown(value)} is not ADDRESS:PORT",
                             "an IP address and port, e.g. 127.0.0.1:15020")
        return host, number

    def str_map(self, name: str) -> dict[str, str]:
        raw = self.raw(name)
        if raw is None:
            return {}
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise self.error(name, f"got {shown(raw)}", "a mapping of strings to strings")
        return dict(raw)
