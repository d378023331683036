"""The ``capture:`` section of the agent config.

Only what the operator may choose lives here. The exclusions that keep a VM
reachable (inbound SSH, the metadata address, the registrar) are not
configurable: the planner adds them whatever this section says. The proxy's
user and ports come from the ``proxy:`` section (``agent/proxy/config.py``),
which the sidecar reads too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.proxy.config import ProxyConfig
from meshcore.config.errors import ConfigError
from meshcore.config.reader import Section

BACKENDS = ("auto", "iptables-nft", "iptables-legacy", "nftables")
ENVOY_DOWN_POLICIES = ("fail-closed", "fail-open")
ALL = "*"
# Istio's ISTIO_LOCAL_EXCLUDE_PORTS minus 22 (which the planner forces anyway):
# the proxy's own admin/health/metrics ports must never loop back into it.
DEFAULT_EXCLUDE_INBOUND = (15090, 15021, 15020)


@dataclass(frozen=True)
class CaptureConfig:
    enabled: bool = False
    backend: str = "auto"
    inbound_ports: tuple[int, ...] | None = None  # None means "*": every port
    exclude_inbound_ports: tuple[int, ...] = DEFAULT_EXCLUDE_INBOUND
    include_outbound_cidrs: tuple[str, ...] | None = None  # None means "*"
    exclude_outbound_cidrs: tuple[str, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    ipv6: bool = True
    # Redirect to the proxy's ports, exempt its user.
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    # Another proxy (not our sidecar) owns proxy.outbound_port/inbound_port.
    external_proxy: bool = False
    envoy_down_policy: str = "fail-closed"
    fail_open_after: float = 30.0
    probe: bool = True


def _is_all(s: Section, name: str) -> bool:
    """True when the key is the string ``"*"`` (every port / every address)."""
    try:
        return s.text(name) == ALL
    except ConfigError:
        return False  # not a string: the list getter that follows reports it


def _ports_or_all(s: Section, name: str) -> tuple[int, ...] | None:
    if not s.has(name) or _is_all(s, name):
        return None
    return s.port_list(name)


def _cidrs_or_all(s: Section, name: str) -> tuple[str, ...] | None:
    if not s.has(name) or _is_all(s, name):
        return None
    return s.cidr_list(name)


def _interfaces(s: Section, name: str) -> tuple[str, ...]:
    names = s.str_list(name)
    for iface in names:
        # IFNAMSIZ is 16 including the NUL; rule text must never carry quotes or spaces.
        if len(iface) > 15 or not all(c.isalnum() or c in "-_.@+" for c in iface):
            raise s.error(name, f"{iface!r} is not an interface name",
                          "Linux interface names, up to 15 of [A-Za-z0-9-_.@+]")
    return names


def parse_capture(s: Section, proxy: ProxyConfig) -> CaptureConfig:
    """``proxy`` is the parsed ``proxy:`` section: where to redirect, whom to exempt."""
    return CaptureConfig(
        enabled=s.flag("enabled", False),
        backend=s.text("backend", "auto", choices=BACKENDS),
        inbound_ports=_ports_or_all(s, "inbound_ports"),
        exclude_inbound_ports=s.port_list("exclude_inbound_ports", DEFAULT_EXCLUDE_INBOUND),
        include_outbound_cidrs=_cidrs_or_all(s, "include_outbound_cidrs"),
        exclude_outbound_cidrs=s.cidr_list("exclude_outbound_cidrs"),
        exclude_outbound_ports=s.port_list("exclude_outbound_ports"),
        exclude_interfaces=_interfaces(s, "exclude_interfaces"),
        ipv6=s.flag("ipv6", True),
        proxy=proxy,
        external_proxy=s.flag("external_proxy", False),
        envoy_down_policy=s.text("envoy_down_policy", "fail-closed",
                                 choices=ENVOY_DOWN_POLICIES),
        fail_open_after=s.duration("fail_open_after", 30.0, minimum=0, maximum=86400),
        probe=s.flag("probe", True),
    )
