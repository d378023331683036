"""The mesh part of ``registrar.yaml``: a group's WorkloadGroup fields, the service
VIP range, and the xDS server. Read with the shared ``Section`` reader, so every
error names the file, the dotted key and what is allowed.

Field names follow Istio's WorkloadGroup (``ports``, ``network``, ``probe`` with
``httpGet``/``tcpSocket``/``exec`` and ``periodSeconds``...): an operator who
knows Istio reads them without a manual.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from meshcore.config.reader import Section

_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
PROBE_KINDS = ("httpGet", "tcpSocket", "exec")


@dataclass(frozen=True)
class Probe:
    """Istio/Kubernetes readiness probe semantics; run by the agent, never here."""

    kind: str  # one of PROBE_KINDS
    port: int = 0  # httpGet, tcpSocket
    path: str = "/"  # httpGet
    command: tuple[str, ...] = ()  # exec
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def to_json(self) -> dict[str, object]:
        action: dict[str, object]
        if self.kind == "httpGet":
            action = {"path": self.path, "port": self.port}
        elif self.kind == "tcpSocket":
            action = {"port": self.port}
        else:
            action = {"command": list(self.command)}
        return {self.kind: action, "periodSeconds": self.period_seconds,
                "timeoutSeconds": self.timeout_seconds,
                "successThreshold": self.success_threshold,
                "failureThreshold": self.failure_threshold}


@dataclass(frozen=True)
class GroupMesh:
    """What a WorkloadGroup adds to a plain identity group."""

    ports: dict[str, int] = field(default_factory=dict)
    network: str = ""
    probe: Probe | None = None


@dataclass(frozen=True)
class MeshConfig:
    vip_range: str = "240.240.0.0/16"
    xds_host: str | None = None  # None: no xDS server
    xds_port: int = 0
    # A workload whose last status report is older than this is unhealthy.
    health_grace: float = 30.0
    # Push discipline: wait for a quiet period after a change, but never longer
    # than max_delay after the first change of a burst.
    debounce_quiet: float = 0.1
    debounce_max: float = 0.5
    poll_interval: float = 0.05


def read_ports(s: Section, name: str = "ports") -> dict[str, int]:
    raw = s.raw(name)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise s.error(name, f"got {raw!r}", "a mapping of port names to numbers, e.g. {http: 9090}")
    ports: dict[str, int] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _PORT_NAME.match(key):
            raise s.error(name, f"{key!r} is not a port name",
                          "lowercase letters, digits and '-', at most 15 characters")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise s.error(f"{name}.{key}", f"{value!r} is not a port", "TCP ports 1..65535")
        ports[key] = value
    return ports


def _probe(s: Section) -> Probe:
    kinds = [k for k in PROBE_KINDS if s.has(k)]
    if len(kinds) != 1:
        raise s.error(kinds[1] if kinds else "httpGet",
                      "more than one action" if kinds else "no action",
                      "exactly one of httpGet {path, port}, tcpSocket {port}, exec {command}")
    kind = kinds[0]
    action = s.section(kind)
    port, path = 0, "/"
    command: tuple[str, ...] = ()
    if kind in ("httpGet", "tcpSocket"):
        port = action.integer("port", 0, minimum=1, maximum=65535)
    if kind == "httpGet":
        path = action.text("path", "/")
        if not path.startswith("/"):
            raise action.error("path", f"{path!r} does not start with '/'", "an absolute path")
    if kind == "exec":
        command = action.str_list("command")
        if not command:
            raise action.error("command", "is empty", "a non-empty list: [program, args...]")
    action.finish()
    probe = Probe(
        kind=kind, port=port, path=path, command=command,
        period_seconds=s.integer("periodSeconds", 10, minimum=1, maximum=3600),
        timeout_seconds=s.integer("timeoutSeconds", 1, minimum=1, maximum=3600),
        success_threshold=s.integer("successThreshold", 1, minimum=1, maximum=100),
        failure_threshold=s.integer("failureThreshold", 3, minimum=1, maximum=100),
    )
    s.finish()
    return probe


def read_group_mesh(s: Section) -> GroupMesh:
    """The WorkloadGroup keys of one ``groups:`` entry (call before ``s.finish()``)."""
    network = s.text("network", "")
    return GroupMesh(ports=read_ports(s), network=network,
                     probe=_probe(s.section("probe")) if s.has("probe") else None)


def read_mesh(root: Section) -> MeshConfig:
    """``services: {vip_range}`` and ``xds: {listen, health_grace, debounce...}``."""
    services = root.section("services")
    vip_range = services.text("vip_range", MeshConfig.vip_range)
    try:
        network = ipaddress.ip_network(vip_range, strict=True)
    except ValueError:
        raise services.error("vip_range", f"{vip_range!r} is not a network",
                             "an IPv4 network such as 240.240.0.0/16") from None
    if network.version != 4 or network.num_addresses < 4:
        raise services.error("vip_range", f"{vip_range!r} is too small or not IPv4",
                             "an IPv4 network of at least /30")
    services.finish()
    xds = root.section("xds")
    host: str | None = None
    port = 0
    if xds.has("listen"):
        host, port = xds.host_port("listen", "127.0.0.1:15010")
    quiet = xds.duration("debounce_quiet", 0.1, minimum=0.0, maximum=10.0)
    config = MeshConfig(
        vip_range=str(network), xds_host=host, xds_port=port,
        health_grace=xds.duration("health_grace", 30.0, minimum=1.0, maximum=3600.0),
        debounce_quiet=quiet,
        debounce_max=xds.duration("debounce_max", max(0.5, quiet), minimum=quiet, maximum=60.0),
        poll_interval=xds.duration("poll_interval", 0.05, minimum=0.01, maximum=5.0),
    )
    xds.finish()
    return config
