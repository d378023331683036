"""Pure: local sidecar config + mesh settings -> Envoy bootstrap (a dict, then YAML).

Static mesh mode, Istio's ports and semantics:

- inbound ``:15006``: original destination port picks the app port; only mTLS
  from allowed SPIFFE IDs is accepted; plaintext and unknown ports match no
  filter chain and are closed (and logged). Upstream connections to the app
  leave from 127.0.0.6 so traffic capture lets them through (Istio's contract).
- outbound ``:15001``: configured mesh services (by original destination
  address and port) get mTLS with their expected SPIFFE ID verified; anything
  else is passed through unchanged to its original destination.
- admin on 127.0.0.1 only. Access logs go to stdout, one line per connection,
  which the supervisor forwards to the agent's log.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from agent.sidecar.config import OutboundService, SidecarConfig
from agent.sidecar.settings import EnvoyPaths, MeshSettings
from agent.sidecar.tls import downstream_tls, upstream_tls

PASSTHROUGH = "PassthroughCluster"
INBOUND_SOURCE = "127.0.0.6"
CONNECT_TIMEOUT = "5s"
_EXT = "type.googleapis.com/envoy.extensions."
_LOG_COMMON = (
    "src=%DOWNSTREAM_REMOTE_ADDRESS% dst=%DOWNSTREAM_LOCAL_ADDRESS% "
    "upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% "
    "bytes_in=%BYTES_RECEIVED% bytes_out=%BYTES_SENT% duration_ms=%DURATION% "
    "flags=%RESPONSE_FLAGS% reason=%UPSTREAM_TRANSPORT_FAILURE_REASON%"
)
INBOUND_LOG = "[%START_TIME%] inbound peer=%DOWNSTREAM_PEER_URI_SAN% " + _LOG_COMMON + "\n"
OUTBOUND_LOG = "[%START_TIME%] outbound peer=%UPSTREAM_PEER_URI_SAN% " + _LOG_COMMON + "\n"


def allowed_peers(config: SidecarConfig, mesh: MeshSettings) -> tuple[str, ...]:
    """Configured identities, else every workload of our own trust domain."""
    return config.allowed_peers or (f"spiffe://{mesh.trust_domain}/*",)


def _access_log(fmt: str, *, refused_only: bool = False) -> list[dict[str, Any]]:
    log: dict[str, Any] = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _EXT + "access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": fmt}},
        },
    }
    if refused_only:
        # A listener's own log sees every connection; the tcp_proxy already logs
        # the accepted ones, so here only those no filter chain took (flag NR).
        log["filter"] = {"response_flag_filter": {"flags": ["NR"]}}
    return [log]


def _tcp_proxy(stat_prefix: str, cluster: str, log_format: str) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": _EXT + "filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            "access_log": _access_log(log_format),
        },
    }]


def _listener_filters(*, tls_inspector: bool) -> list[dict[str, Any]]:
    filters = [{
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": _EXT + "filters.listener.original_dst.v3.OriginalDst"},
    }]
    if tls_inspector:
        filters.append({
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": _EXT + "filters.listener.tls_inspector.v3.TlsInspector"},
        })
    return filters


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _any_address(config: SidecarConfig, port: int) -> dict[str, Any]:
    """The listener address on every IPv4 address, plus [::] when dual-stack (Envoy
    makes IPv6 listener sockets v6-only unless told otherwise, so both bind)."""
    out: dict[str, Any] = {"address": _address("0.0.0.0", port)}  # noqa: S104 (capture target)
    if config.ipv6:
        out["additional_addresses"] = [{"address": _address("::", port)}]
    return out


def _static_cluster(name: str, host: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}]},
        **extra,
    }


def inbound_cluster_name(port: int) -> str:
    return f"inbound|{port}"


def outbound_cluster_name(service: OutboundService) -> str:
    return f"outbound|{service.name}"


def _inbound(config: SidecarConfig, mesh: MeshSettings, paths: EnvoyPaths) -> dict[str, Any]:
    peers = allowed_peers(config, mesh)
    chains = [{
        "name": f"inbound|{port}",
        "filter_chain_match": {"destination_port": port, "transport_protocol": "tls"},
        "transport_socket": downstream_tls(paths, peers),
        "filters": _tcp_proxy(f"inbound_{port}", inbound_cluster_name(port), INBOUND_LOG),
    } for port in sorted(set(config.app_ports))]
    return {
        "name": "inbound",
        **_any_address(config, config.proxy.inbound_port),
        "per_connection_buffer_limit_bytes": config.buffer_limit,
        "listener_filters": _listener_filters(tls_inspector=True),
        "filter_chains": chains,
        # Connections that match no chain (plaintext, unknown port) are closed;
        # this line is how an operator sees that they were refused.
        "access_log": _access_log(INBOUND_LOG, refused_only=True),
    }


def _outbound(config: SidecarConfig, paths: EnvoyPaths) -> dict[str, Any]:
    chains = []
    for service in config.outbound_services:
        ip = ipaddress.ip_address(service.address)
        chains.append({
            "name": outbound_cluster_name(service),
            "filter_chain_match": {
                "destination_port": service.port,
                "prefix_ranges": [{"address_prefix": str(ip), "prefix_len": ip.max_prefixlen}],
            },
            "filters": _tcp_proxy(f"outbound_{service.name}", outbound_cluster_name(service),
                                  OUTBOUND_LOG),
        })
    return {
        "name": "outbound",
        **_any_address(config, config.proxy.outbound_port),
        "per_connection_buffer_limit_bytes": config.buffer_limit,
        "listener_filters": _listener_filters(tls_inspector=False),
        "filter_chains": chains,
        "default_filter_chain": {
            "name": PASSTHROUGH,
            "filters": _tcp_proxy("outbound_passthrough", PASSTHROUGH, OUTBOUND_LOG),
        },
    }


def _clusters(config: SidecarConfig, paths: EnvoyPaths) -> list[dict[str, Any]]:
    clusters: list[dict[str, Any]] = [{
        "name": PASSTHROUGH,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": CONNECT_TIMEOUT,
    }]
    bind = {"upstream_bind_config": {
        "source_address": {"address": INBOUND_SOURCE, "port_value": 0}}}
    clusters += [_static_cluster(inbound_cluster_name(port), "127.0.0.1", port, **bind)
                 for port in sorted(set(config.app_ports))]
    clusters += [_static_cluster(outbound_cluster_name(s), s.address, s.port,
                                 transport_socket=upstream_tls(paths, s.spiffe_id))
                 for s in config.outbound_services]
    for cluster in clusters:
        cluster["per_connection_buffer_limit_bytes"] = config.buffer_limit
    return clusters


def render_bootstrap(
    config: SidecarConfig, mesh: MeshSettings, paths: EnvoyPaths
) -> dict[str, Any]:
    """The whole Envoy bootstrap for this workload, as plain data."""
    listeners = [_outbound(config, paths)]
    if config.app_ports:
        # Envoy rejects a listener without filter chains; no app ports means
        # nothing is served inbound, and capture has nothing to redirect.
        listeners.insert(0, _inbound(config, mesh, paths))
    return {
        "node": {
            "id": mesh.spiffe_id,
            "cluster": f"{mesh.service_account}.{mesh.namespace}",
            "metadata": {
                "NAMESPACE": mesh.namespace,
                "SERVICE_ACCOUNT": mesh.service_account,
                "WORKLOAD_GROUP": mesh.group,
                "LABELS": dict(sorted(mesh.labels.items())),
            },
        },
        "admin": {"address": _address("127.0.0.1", config.admin_port)},
        "static_resources": {"listeners": listeners, "clusters": _clusters(config, paths)},
    }


def to_yaml(document: dict[str, Any]) -> str:
    """Stable YAML (key order as built) so golden files diff cleanly."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
