"""The ``proxy:`` section of the agent config: the one description of the proxy.

Example::

    proxy:
      user: mesh-proxy        # looked up at start; or uid + gid (numeric, Istio uses 1337)
      outbound_port: 15001    # capture redirects outbound TCP here
      inbound_port: 15006     # capture redirects inbound TCP here

The sidecar runs Envoy as this user on these ports; capture redirects to the
ports and exempts the user's traffic (so the proxy's own connections are not
looped back into it). With ``capture.external_proxy: true`` it describes the
other proxy that owns the ports.

Before this section existed the five keys lived, as ``proxy_user``,
``proxy_uid``, ``proxy_gid``, ``inbound_port`` and ``outbound_port``, in both
``capture:`` and ``sidecar:``. Those places still work and produce a
deprecation warning; a value that disagrees with another place is an error,
since there is only one proxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshcore.config.errors import ConfigWarning
from meshcore.config.reader import Section

MAX_ID = 2**32 - 2  # uid_t is 32-bit and (uid_t)-1 means "no change"
ID_HELP = f"a non-root numeric id 1..{MAX_ID}"
# New key -> its name in the deprecated places (capture:, sidecar:).
LEGACY_NAMES = {"user": "proxy_user", "uid": "proxy_uid", "gid": "proxy_gid",
                "outbound_port": "outbound_port", "inbound_port": "inbound_port"}


@dataclass(frozen=True)
class ProxyConfig:
    user: str = "mesh-proxy"
    uid: int | None = None  # uid and gid together override the user lookup
    gid: int | None = None
    outbound_port: int = 15001
    inbound_port: int = 15006


@dataclass(frozen=True)
class ParsedProxy:
    config: ProxyConfig
    warnings: tuple[ConfigWarning, ...]


def _value(s: Section, name: str, field: str) -> str | int:
    """One key, validated by the same rule wherever it is set."""
    if field == "user":
        return s.text(name)
    if field in ("uid", "gid"):
        raw = s.raw(name)
        if raw == 0 and not isinstance(raw, bool):
            # Exempting root would exempt the agent and every root process from capture.
            raise s.error(name, "must not be 0 (root)", ID_HELP)
        return s.integer(name, 0, minimum=1, maximum=MAX_ID)
    return s.integer(name, 0, minimum=1, maximum=65535)


def _optional(value: str | int | None) -> int | None:
    return value if isinstance(value, int) else None


def parse_proxy(s: Section, legacy: Sequence[Section] = ()) -> ParsedProxy:
    """Read ``proxy:``, then the deprecated keys in each ``legacy`` section.

    A deprecated key gives a warning naming its file and dotted key; one that
    disagrees with a value already read (``proxy:`` first, then the legacy
    sections in order) is a ConfigError naming it.
    """
    values: dict[str, str | int] = {}
    origin: dict[str, tuple[Section, str]] = {}
    warnings: list[ConfigWarning] = []
    for field, old in LEGACY_NAMES.items():
        if s.has(field):
            values[field] = _value(s, field, field)
            origin[field] = (s, field)
        else:
            s.raw(field)  # an allowed key: finish() lists it for a typo
        for section in legacy:
            if not section.has(old):
                continue
            value = _value(section, old, field)
            new_key = s.key(field)
            warnings.append(section.warning(old, "is deprecated", f"{new_key} instead"))
            if field in values and values[field] != value:
                first_section, first_name = origin[field]
                first = first_section.key(first_name)
                raise section.error(old, f"{value!r} differs from {first} {values[field]!r}",
                                    f"only {new_key} (or the same value as {first})")
            values.setdefault(field, value)
            origin.setdefault(field, (section, old))
    config = ProxyConfig(
        user=str(values.get("user", ProxyConfig.user)),
        uid=_optional(values.get("uid")),
        gid=_optional(values.get("gid")),
        outbound_port=int(values.get("outbound_port", ProxyConfig.outbound_port)),
        inbound_port=int(values.get("inbound_port", ProxyConfig.inbound_port)),
    )
    if (config.uid is None) != (config.gid is None):
        section, name = origin["uid" if config.uid is not None else "gid"]
        raise section.error(name, f"is set without {s.key('gid' if config.uid else 'uid')}",
                            "both uid and gid (numeric), or neither: then user is looked up")
    if config.outbound_port == config.inbound_port:
        section, name = origin.get("inbound_port") or origin["outbound_port"]
        raise section.error(name, "inbound_port and outbound_port are the same port",
                            "two different TCP ports, e.g. 15001 and 15006")
    return ParsedProxy(config, tuple(warnings))
