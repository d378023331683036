"""Pure: the ADS bootstrap for ``sidecar.mode: xds``.

Envoy starts with only an admin listener and one static cluster, ``xds``: the
registrar's ADS server (its API host, the port the settings name) over gRPC
(HTTP/2) with mTLS. Everything else (listeners, clusters, endpoints) arrives
over ADS, so a mesh change is a push, never a new bootstrap or a restart.

- ``node.id`` is the workload's SPIFFE ID: the registrar refuses a stream whose
  first node id is not the client certificate's.
- ``node.metadata.SDS_DIR`` tells the registrar where this VM's SDS files are;
  the resources it sends reference the same ``default`` (certificate) and
  ``ROOTCA`` (bundle) secrets the static sidecar uses, read by Envoy from
  local files. The key never leaves the VM and rotation works unchanged.
- The xDS connection itself presents the same certificate (file SDS) and
  checks the registrar's certificate against the mesh trust bundle and the
  registrar's address (an IP SAN) or name (a DNS SAN, sent as SNI).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.sidecar.settings import BUNDLE_SECRET, CERT_SECRET, EnvoyPaths, MeshSettings
from agent.sidecar.tls import sds_ref
from meshcore.netaddr import is_ip_literal

XDS_CLUSTER = "xds"
# The ADS stream's reconnect backoff: within a second or two of the registrar coming
# back, capped at 5 s for an outage. Envoy's default (0.5 s doubling to 30 s, jittered)
# took ~8.5 s after a short outage, and up to 30 s after a long one.
ADS_RETRY_POLICY = {"retry_back_off": {"base_interval": "0.5s", "max_interval": "5s"}}
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


@dataclass(frozen=True)
class XdsServer:
    """Where the ADS server is: the registrar API's host and the settings' xDS port."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        return is_ip_literal(self.host)


def _xds_tls(server: XdsServer, paths: EnvoyPaths) -> dict[str, Any]:
    san = {"san_type": "IP_ADDRESS" if server.is_ip else "DNS",
           "matcher": {"exact": server.host}}
    context: dict[str, Any] = {
        "@type": _TLS,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [
                sds_ref(CERT_SECRET, str(paths.cert_secret_file), paths)],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [san]},
                "validation_context_sds_secret_config": sds_ref(
                    BUNDLE_SECRET, str(paths.bundle_secret_file), paths),
            },
        },
    }
    if not server.is_ip:
        context["sni"] = server.host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _xds_cluster(server: XdsServer, paths: EnvoyPaths) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER,
        # A name is re-resolved by Envoy (the registrar may move); an IP is fixed.
        "type": "STATIC" if server.is_ip else "STRICT_DNS",
        "connect_timeout": "5s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _H2,
                "explicit_http_config": {"http2_protocol_options": {
                    # gRPC keepalive: a dead registrar is noticed and the stream
                    # re-established, while the last config keeps serving.
                    "connection_keepalive": {"interval": "30s", "timeout": "10s"}}},
            }},
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(server.host, server.port)}}]}]},
        "transport_socket": _xds_tls(server, paths),
    }


def render_ads_bootstrap(mesh: MeshSettings, server: XdsServer, paths: EnvoyPaths, *,
                         admin_port: int) -> dict[str, Any]:
    """The whole ADS bootstrap for this workload, as plain data."""
    return {
        "node": {
            "id": mesh.spiffe_id,
            "cluster": f"{mesh.service_account}.{mesh.namespace}",
            "metadata": {
                "SDS_DIR": str(paths.sds_dir),
                "NAMESPACE": mesh.namespace,
                "SERVICE_ACCOUNT": mesh.service_account,
                "WORKLOAD_GROUP": mesh.group,
                "LABELS": dict(sorted(mesh.labels.items())),
            },
        },
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER, "retry_policy": ADS_RETRY_POLICY}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [_xds_cluster(server, paths)]},
    }
