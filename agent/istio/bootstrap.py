"""Pure: the Envoy bootstrap for Istio mode -- everything else comes from istiod.

Envoy holds only what it needs to reach istiod and to be observed; istiod's
ADS stream (LDS/CDS, then EDS/RDS) supplies the same listeners and clusters a
pod sidecar gets, including virtualOutbound :15001 and virtualInbound :15006.

- ``xds-grpc``: istiod's XDS port (15012) at the address the hosts file gives,
  over mTLS with our workload certificate; istiod is verified against the
  mesh roots *and* its DNS name (the SNI too), as pilot-agent does.
- ``sds-grpc``: the agent's SDS socket, which serves ``default`` and
  ``ROOTCA`` (agent/istio/sds_server.py). istiod's pushed TLS contexts name
  this cluster, so its name is part of the contract.
- ``:15021`` ``/healthz/ready`` (Envoy's readiness, for probes and load
  balancers) and ``:15090`` ``/stats/prometheus``, Istio's ports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.istio.address import Address
from agent.istio.node import PROMETHEUS_PORT, STATUS_PORT, IstioNode
from agent.istio.sds_server import CERT_NAME, ROOT_NAME
from agent.sidecar.ads import ADS_RETRY_POLICY
from agent.sidecar.config import SidecarConfig

XDS_CLUSTER = "xds-grpc"
SDS_CLUSTER = "sds-grpc"
ADMIN_CLUSTER = "prometheus_stats"
_EXT = "type.googleapis.com/envoy.extensions."


def _http2() -> dict[str, Any]:
    # Fresh dicts everywhere: shared ones would become YAML anchors.
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _EXT + "upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}


def _ads() -> dict[str, Any]:
    return {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}


def _sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": {
        "api_config_source": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "set_node_on_first_message_only": True,
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]},
        "resource_api_version": "V3"}}


def _endpoint(address: dict[str, Any], name: str) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": address}}]}]}


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _xds_cluster(istiod: Address, istiod_ip: str) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": _endpoint(_socket(istiod_ip, istiod.port), XDS_CLUSTER),
        "typed_extension_protocol_options": _http2(),
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": _EXT + "transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": istiod.host,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [_sds(CERT_NAME)],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [
                        {"san_type": "IP_ADDRESS" if istiod.is_ip else "DNS",
                         "matcher": {"exact": istiod.host}}]},
                    "validation_context_sds_secret_config": _sds(ROOT_NAME),
                },
            },
        }},
        # Keep the stream alive through NAT and idle timeouts between pushes.
        "upstream_connection_options": {"tcp_keepalive": {
            "keepalive_time": 300, "keepalive_interval": 30}},
    }


def _sds_cluster(socket_path: Path) -> dict[str, Any]:
    return {
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": _endpoint({"pipe": {"path": str(socket_path)}}, SDS_CLUSTER),
        "typed_extension_protocol_options": _http2(),
    }


def _route_listener(name: str, port: int, path: str, rewrite: str) -> dict[str, Any]:
    """An HTTP listener that forwards one path to Envoy's own admin endpoint."""
    return {
        "name": name,
        "address": _socket("0.0.0.0", port),  # noqa: S104 (probes come from outside)
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": _EXT + "filters.network.http_connection_manager.v3."
                                "HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [{
                    "name": name, "domains": ["*"],
                    "routes": [{"match": {"path": path},
                                "route": {"cluster": ADMIN_CLUSTER,
                                          "prefix_rewrite": rewrite}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": _EXT + "filters.http.router.v3.Router"}}],
            },
        }]}],
    }


def render_ads_bootstrap(sidecar: SidecarConfig, node: IstioNode, *, istiod: Address,
                         istiod_ip: str, sds_socket: Path) -> dict[str, Any]:
    """The whole bootstrap as plain data (``agent.sidecar.render.to_yaml`` writes it)."""
    return {
        "node": {"id": node.id, "cluster": node.cluster, "metadata": dict(node.metadata)},
        "admin": {"address": _socket("127.0.0.1", sidecar.admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC", "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                # Back on istiod within 5 s of its return, as with the registrar.
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER,
                                                  "retry_policy": ADS_RETRY_POLICY}}]},
            "cds_config": _ads(),
            "lds_config": _ads(),
        },
        "static_resources": {
            "clusters": [
                _xds_cluster(istiod, istiod_ip),
                _sds_cluster(sds_socket),
                {"name": ADMIN_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": _endpoint(_socket("127.0.0.1", sidecar.admin_port),
                                              ADMIN_CLUSTER)},
            ],
            "listeners": [
                _route_listener("health", STATUS_PORT, "/healthz/ready", "/ready"),
                _route_listener("prometheus", PROMETHEUS_PORT, "/stats/prometheus",
                                "/stats/prometheus"),
            ],
        },
    }
