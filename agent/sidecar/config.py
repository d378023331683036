"""The ``sidecar:`` section of the agent config.

Example::

    sidecar:
      enabled: true
      mode: auto                      # auto | xds | static (see docs/discovery.md)
      envoy_path: /usr/local/bin/envoy
      admin_port: 15000               # Envoy's admin interface, on 127.0.0.1 only
      app_ports: [8080, 9090]         # original destination port -> 127.0.0.1:<port>
      allowed_peers:                  # default: every workload of our trust domain
        - spiffe://example.org/ns/shop/sa/frontend
        - spiffe://example.org/ns/ops/*
      outbound_services:
        payments: {address: 10.0.0.7:8443, spiffe_id: spiffe://example.org/ns/pay/sa/api}
      drain_time: 5s
      buffer_limit: 32768             # bytes per connection and direction
      restart: {min_backoff: 500ms, max_backoff: 30s, failure_threshold: 5}

Envoy's user and its inbound/outbound ports come from the ``proxy:`` section
(``agent/proxy/config.py``), which capture reads too. ``admin_port`` stays
here: only our own Envoy has it, capture never redirects to it, and an
external proxy's admin interface is none of the agent's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.proxy.config import ProxyConfig
from meshcore.config.reader import Section

# auto: xds when the registrar's workload settings offer an xDS port, else static.
MODES = ("auto", "xds", "static")
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
SPIFFE_PATTERN_HELP = "spiffe://TRUST-DOMAIN/PATH, or a prefix ending in /* (spiffe://td/ns/x/*)"


@dataclass(frozen=True)
class OutboundService:
    """A mesh service the outbound listener originates mTLS to."""

    name: str
    address: str
    port: int
    spiffe_id: str


@dataclass(frozen=True)
class RestartPolicy:
    min_backoff: float
    max_backoff: float
    failure_threshold: int
    stable_after: float


@dataclass(frozen=True)
class SidecarConfig:
    enabled: bool
    mode: str = "auto"
    envoy_path: Path = Path("/usr/local/bin/envoy")
    # Envoy's user and listener ports: the proxy: section, shared with capture.
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    admin_port: int = 15000
    app_ports: tuple[int, ...] = ()
    allowed_peers: tuple[str, ...] = ()
    outbound_services: tuple[OutboundService, ...] = ()
    drain_time: float = 5.0
    ready_timeout: float = 30.0
    concurrency: int = 2
    # Bytes Envoy buffers per connection and direction (listeners and clusters).
    # Envoy's own default is 1 MiB, sized for gateways; a VM's sidecar relays
    # its apps' TCP streams, where 32 KiB keeps a slow peer from pinning a
    # megabyte per connection (see docs/performance.md for the measurement).
    buffer_limit: int = 32 * 1024
    envoy_log_level: str = "warning"
    restart: RestartPolicy = RestartPolicy(0.5, 30.0, 5, 60.0)
    # Also listen on [::] (v6-only sockets beside the IPv4 ones): capture
    # redirects IPv6 too, and a redirect to a port nobody serves black-holes
    # the VM's IPv6 traffic. The daemon turns it off on kernels without IPv6.
    ipv6: bool = False


def _spiffe_pattern(s: Section, key: str, value: str) -> str:
    body = value.removeprefix("spiffe://")
    trust_domain = body.partition("/")[0]
    if not value.startswith("spiffe://") or not trust_domain or "*" in value.removesuffix("/*"):
        raise s.error(key, f"{value!r} is not a SPIFFE ID", SPIFFE_PATTERN_HELP)
    return value


def _outbound(s: Section) -> tuple[OutboundService, ...]:
    services = []
    for name in s.keys():  # noqa: SIM118 (Section is not a dict)
        sub = s.section(name)
        if not sub.has("address"):
            raise sub.error("address", "is required", "an IP address and port, e.g. 10.0.0.7:8443")
        host, port = sub.host_port("address", "")
        spiffe_id = _spiffe_pattern(sub, "spiffe_id", sub.text("spiffe_id"))
        if spiffe_id.endswith("/*"):
            raise sub.error("spiffe_id", "must be one exact identity", "spiffe://td/ns/N/sa/SA")
        sub.finish()
        services.append(OutboundService(name=name, address=host, port=port, spiffe_id=spiffe_id))
    s.finish()
    return tuple(services)


def _restart(s: Section) -> RestartPolicy:
    policy = RestartPolicy(
        min_backoff=s.duration("min_backoff", 0.5, minimum=0.01, maximum=60),
        max_backoff=s.duration("max_backoff", 30.0, minimum=0.01, maximum=600),
        failure_threshold=s.integer("failure_threshold", 5, minimum=1, maximum=1000),
        stable_after=s.duration("stable_after", 60.0, minimum=1, maximum=3600),
    )
    if policy.min_backoff > policy.max_backoff:
        raise s.error("min_backoff", "is larger than max_backoff", "min_backoff <= max_backoff")
    s.finish()
    return policy


def parse_sidecar(s: Section, proxy: ProxyConfig) -> SidecarConfig:
    """``proxy`` is the parsed ``proxy:`` section: Envoy's user and listener ports."""
    enabled = s.flag("enabled", False)
    admin_port = s.integer("admin_port", 15000, minimum=1, maximum=65535)
    if admin_port in (proxy.inbound_port, proxy.outbound_port):
        raise s.error("admin_port", f"{admin_port} is one of proxy.inbound_port and "
                      "proxy.outbound_port", "a port other than "
                      f"{proxy.outbound_port} and {proxy.inbound_port}")
    envoy_ports = (admin_port, proxy.outbound_port, proxy.inbound_port)
    app_ports = s.port_list("app_ports")
    for port in app_ports:
        if port in envoy_ports:
            raise s.error("app_ports", f"{port} is one of Envoy's own ports",
                          "ports other than " + ", ".join(str(p) for p in envoy_ports))
    return SidecarConfig(
        enabled=enabled,
        mode=s.text("mode", "auto", choices=MODES),
        envoy_path=s.path("envoy_path", "/usr/local/bin/envoy"),
        proxy=proxy,
        admin_port=admin_port,
        app_ports=app_ports,
        allowed_peers=tuple(_spiffe_pattern(s, "allowed_peers", v)
                            for v in s.str_list("allowed_peers")),
        outbound_services=_outbound(s.section("outbound_services")),
        drain_time=s.duration("drain_time", 5.0, minimum=0, maximum=600),
        ready_timeout=s.duration("ready_timeout", 30.0, minimum=1, maximum=600),
        concurrency=s.integer("concurrency", 2, minimum=1, maximum=64),
        buffer_limit=s.integer("buffer_limit", 32 * 1024, minimum=1024, maximum=64 * 2**20),
        envoy_log_level=s.text("envoy_log_level", "warning", choices=ENVOY_LOG_LEVELS),
        restart=_restart(s.section("restart")),
        ipv6=s.flag("ipv6", True),
    )
