"""The one lookup of the proxy's uid/gid, for the sidecar (which runs Envoy as
it) and for capture (which exempts its traffic)."""

from __future__ import annotations

import pwd
from collections.abc import Callable
from dataclasses import dataclass

from agent.proxy.config import ProxyConfig


@dataclass(frozen=True)
class ProxyIdentity:
    """The proxy's numeric uid/gid, resolved once at start."""

    uid: int
    gid: int


class ProxyUserMissing(Exception):
    """``proxy.user`` names no account and no numeric uid/gid was given (exit 78)."""


def resolve_proxy_user(
    config: ProxyConfig, *, getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam
) -> ProxyIdentity:
    """Numeric ``proxy.uid``/``proxy.gid`` win; otherwise look ``proxy.user`` up."""
    if config.uid is not None and config.gid is not None:
        return ProxyIdentity(config.uid, config.gid)
    try:
        entry = getpwnam(config.user)
    except KeyError:
        raise ProxyUserMissing(
            f"proxy.user: no such user {config.user!r} (create it, or set proxy.uid and "
            "proxy.gid)") from None
    return ProxyIdentity(entry.pw_uid, entry.pw_gid)
