"""The agent's configuration: one frozen, typed object built once at start-up.

Each concern parses its own section (``parse_*``) with a ``Section`` reader;
this module only assembles them. Defaults follow the on-disk layout in docs/agent.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.attest.config import AttestationConfig, parse_attestation
from agent.capture.config import CaptureConfig, parse_capture
from agent.dns.config import DnsConfig, parse_dns
from agent.istio.config import MESH_TYPES, IstioConfig, parse_istio
from agent.proxy.config import ProxyConfig, parse_proxy
from agent.sidecar.config import SidecarConfig, parse_sidecar
from meshcore.config.errors import ConfigWarning
from meshcore.config.reader import Section
from meshcore.config.source import Source, load_source

DEFAULT_CONFIG = Path("/etc/mesh-agent/agent.yaml")
KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class RegistrarConfig:
    url: str
    ca_file: Path
    timeout: float
    # How often the trust bundle is fetched (a CA rotation reaches the VM within it).
    bundle_poll_interval: float = 300.0


@dataclass(frozen=True)
class RotationConfig:
    renew_at: float
    jitter: float
    min_backoff: float
    max_backoff: float


@dataclass(frozen=True)
class StatusConfig:
    enabled: bool
    host: str
    port: int


@dataclass(frozen=True)
class WorkloadConfig:
    """Reporting to the registrar's workload API (issue: mesh without Kubernetes)."""

    report: bool = True  # addresses, readiness probe, draining; off: the agent stays silent
    drain_wait: float = 2.0  # after reporting draining, before capture goes off


@dataclass(frozen=True)
class AgentConfig:
    source_file: str
    mesh_type: str                     # "static" (mesh-registrar) or "istio"
    registrar: RegistrarConfig | None  # static mode only
    istio: IstioConfig | None          # istio mode only
    attestation: AttestationConfig
    key_type: str
    rotation: RotationConfig
    status: StatusConfig
    state_dir: Path
    log_level: str
    proxy: ProxyConfig  # the same object as sidecar.proxy and capture.proxy
    sidecar: SidecarConfig
    capture: CaptureConfig
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    # Deprecated keys that still work: logged at start-up, shown by `mesh-agent check`.
    warnings: tuple[ConfigWarning, ...] = ()


def _registrar(s: Section) -> RegistrarConfig:
    return RegistrarConfig(
        url=s.url("url", schemes=("https",)),
        ca_file=s.path("ca_file", "/etc/mesh-agent/registrar-ca.pem"),
        timeout=s.duration("timeout", 10.0, minimum=0.5, maximum=300),
        bundle_poll_interval=s.duration("bundle_poll_interval", 300.0, minimum=1.0,
                                        maximum=86400.0),
    )


def _rotation(s: Section) -> RotationConfig:
    config = RotationConfig(
        renew_at=s.number("renew_at", 0.5, minimum=0.1, maximum=0.9),
        jitter=s.number("jitter", 0.1, minimum=0.0, maximum=0.25),
        min_backoff=s.duration("min_backoff", 1.0, minimum=0.01, maximum=60),
        max_backoff=s.duration("max_backoff", 120.0, minimum=0.05, maximum=3600),
    )
    if config.min_backoff > config.max_backoff:
        raise s.error("min_backoff", "is larger than max_backoff", "min_backoff <= max_backoff")
    return config


def _status(s: Section) -> StatusConfig:
    host, port = s.host_port("listen", "127.0.0.1:15020")
    return StatusConfig(enabled=s.flag("enabled", True), host=host, port=port)


def _workload(s: Section) -> WorkloadConfig:
    return WorkloadConfig(report=s.flag("report", True),
                          drain_wait=s.duration("drain_wait", 2.0, minimum=0, maximum=600))


def build_config(source: Source) -> AgentConfig:
    """Validate merged config data into an ``AgentConfig`` (raises ConfigError)."""
    root = Section(source)
    sections = {name: root.section(name) for name in (
        "mesh", "registrar", "istio", "attestation", "identity", "rotation", "status",
        "proxy", "sidecar", "capture", "workload", "dns")}
    # The proxy keys' old places, in the order a disagreement is reported.
    proxy = parse_proxy(sections["proxy"], legacy=(sections["sidecar"], sections["capture"]))
    mesh_type = sections["mesh"].text("type", "static", choices=MESH_TYPES)
    istio = mesh_type == "istio"
    istio_config = parse_istio(sections["istio"]) if istio else None
    # Istio mode talks to mesh-registrar only for istiod's token (token_source: registrar).
    uses_registrar = istio_config is None or istio_config.token_from_registrar
    if istio and not uses_registrar and root.has("registrar"):
        raise sections["mesh"].error("type", "is istio, but a registrar section is set",
                                     "either mesh.type: istio (istiod's CA) or a registrar; "
                                     "or istio.token_source: registrar")
    if istio and uses_registrar and not root.has("registrar"):
        raise sections["istio"].error("token_source", "is registrar, but no registrar "
                                      "section is set", "a registrar: section with url and "
                                      "ca_file, or token_source: file")
    if not istio and root.has("istio"):
        raise root.error("istio", "is set, but mesh.type is static",
                         "mesh: {type: istio} to use it")
    config = AgentConfig(
        source_file=source.default_file,
        mesh_type=mesh_type,
        registrar=_registrar(sections["registrar"]) if uses_registrar else None,
        istio=istio_config,
        attestation=parse_attestation(sections["attestation"]),
        key_type=sections["identity"].text("key_type", "ecdsa-p256", choices=KEY_TYPES),
        rotation=_rotation(sections["rotation"]),
        status=_status(sections["status"]),
        state_dir=root.path("state_dir", "/var/lib/mesh-agent"),
        log_level=root.text("log_level", "info", choices=LOG_LEVELS),
        proxy=proxy.config,
        sidecar=parse_sidecar(sections["sidecar"], proxy.config),
        capture=parse_capture(sections["capture"], proxy.config),
        workload=_workload(sections["workload"]),
        dns=parse_dns(sections["dns"]),
        warnings=proxy.warnings,
    )
    for section in sections.values():
        section.finish()
    root.finish()
    _check_dataplane(config, sections["capture"])
    return config


def _check_dataplane(config: AgentConfig, capture: Section) -> None:
    """Capture redirects to a proxy's ports: some proxy must serve them."""
    sidecar, cap = config.sidecar, config.capture
    ports = f"{cap.proxy.outbound_port}/{cap.proxy.inbound_port}"
    if cap.external_proxy and sidecar.enabled:
        raise capture.error("external_proxy", f"is true but sidecar.enabled is true: two "
                            f"proxies cannot both own ports {ports}",
                            "false while our sidecar runs, or sidecar.enabled: false")
    if config.dns.enabled and config.dns.capture and not cap.enabled:
        raise capture.error("enabled", "is false but dns.capture is true: the app's DNS "
                            "cannot be redirected without capture",
                            "capture.enabled: true, or dns.capture: false")
    if not cap.enabled:
        return
    if not sidecar.enabled and not cap.external_proxy:
        # Every outbound TCP connection would go to a port nobody serves.
        raise capture.error("enabled", f"is true but sidecar.enabled is false: nothing "
                            f"would serve ports {ports}",
                            "sidecar.enabled: true, or capture.external_proxy: true when "
                            f"another proxy owns ports {ports}")
    if sidecar.enabled and cap.ipv6 and not sidecar.ipv6:
        # IPv6 redirected to a sidecar that does not listen on IPv6 is black-holed.
        raise capture.error("ipv6", "is true but sidecar.ipv6 is false",
                            "false, or sidecar.ipv6: true")


def load_config(path: Path = DEFAULT_CONFIG) -> AgentConfig:
    """Read ``path`` and its ``.d`` drop-ins and validate them."""
    return build_config(load_source(path, require_main=False))


def control_plane_urls(config: AgentConfig) -> tuple[tuple[str, str], ...]:
    """Where the agent renews, as (https URL, name): always exempt from capture.

    Static mode: the registrar. Istio mode: istiod's discovery address and the
    CA address, as dialled (the hosts file's IP, else the host as given)."""
    if config.istio is None:
        assert config.registrar is not None
        return ((config.registrar.url, "registrar"),)
    vm = config.istio.vm
    # istio.token_source: registrar also renews against the registrar.
    urls: dict[str, str] = {} if config.registrar is None else {config.registrar.url: "registrar"}
    for address, why in ((vm.discovery, "istiod"), (vm.ca, "istio-ca")):
        ip = vm.resolve(address)
        host = f"[{ip}]" if ":" in ip else ip
        # istiod is usually its own CA: one address, one exemption.
        urls.setdefault(f"https://{host}:{address.port}", why)
    return tuple(urls.items())


def effective_capture(config: AgentConfig) -> CaptureConfig:
    """The capture config as applied: in Istio mode, with cluster.env's settings
    (istiod and its CA go direct as the control plane: ``control_plane_urls``)."""
    if config.istio is None:
        return config.capture
    from agent.istio.capture import capture_from_cluster_env

    return capture_from_cluster_env(config.capture, config.istio.vm)
