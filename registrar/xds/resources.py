"""Pure: small Envoy v3 resource pieces as plain dicts (proto3 JSON names).

The TLS pieces mirror the agent's static renderer on purpose: certificates
reach Envoy from the agent's local file SDS (``<sds_dir>/cert.yaml`` holding
secret ``default``, ``<sds_dir>/bundle.yaml`` holding ``ROOTCA``, both
watched through the ``sds_dir`` directory), so an Envoy fed by xDS rotates
certificates exactly as a static one does and the registrar never sees a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EXT = "type.googleapis.com/envoy.extensions."
TLS_TYPES = EXT + "transport_sockets.tls.v3."
CERT_SECRET = "default"  # noqa: S105 (a secret's name, Istio's)
BUNDLE_SECRET = "ROOTCA"  # noqa: S105
CONNECT_TIMEOUT = "5s"
INBOUND_SOURCE = "127.0.0.6"  # the capture rules let the sidecar's upstream to the app through
DEFAULT_SDS_DIR = "/var/lib/mesh-agent/envoy/sds"
_COMMON = ("src=%DOWNSTREAM_REMOTE_ADDRESS% dst=%DOWNSTREAM_LOCAL_ADDRESS% "
           "upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% "
           "bytes_in=%BYTES_RECEIVED% bytes_out=%BYTES_SENT% duration_ms=%DURATION% "
           "flags=%RESPONSE_FLAGS% reason=%UPSTREAM_TRANSPORT_FAILURE_REASON% "
           "details=%CONNECTION_TERMINATION_DETAILS%")
INBOUND_LOG = "[%START_TIME%] inbound peer=%DOWNSTREAM_PEER_URI_SAN% " + _COMMON + "\n"
OUTBOUND_LOG = "[%START_TIME%] outbound peer=%UPSTREAM_PEER_URI_SAN% " + _COMMON + "\n"


@dataclass(frozen=True)
class NodeFiles:
    """Where this node's agent keeps the SDS documents (from the node's metadata)."""

    sds_dir: str = DEFAULT_SDS_DIR


def address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def access_log(fmt: str) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.stdout",
        "typed_config": {"@type": EXT + "access_loggers.stream.v3.StdoutAccessLog",
                         "log_format": {"text_format_source": {"inline_string": fmt}}},
    }]


def tcp_proxy(stat_prefix: str, cluster: str, log_format: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": EXT + "filters.network.tcp_proxy.v3.TcpProxy",
                              "stat_prefix": stat_prefix, "cluster": cluster}
    if log_format is not None:
        config["access_log"] = access_log(log_format)
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def _matcher(pattern: str) -> dict[str, str]:
    """``spiffe://td/a/*`` is a prefix; anything else is exact."""
    return {"prefix": pattern[:-1]} if pattern.endswith("/*") else {"exact": pattern}


def rbac(stat_prefix: str, callers: Sequence[str], policy: str) -> dict[str, Any]:
    """Network RBAC on the peer certificate's URI SAN; no callers denies everyone."""
    policies = {}
    if callers:
        policies[policy] = {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principal_name": _matcher(c)}} for c in callers],
        }
    return {"name": "envoy.filters.network.rbac",
            "typed_config": {"@type": EXT + "filters.network.rbac.v3.RBAC",
                             "stat_prefix": stat_prefix,
                             "rules": {"action": "ALLOW", "policies": policies}}}


def _sds(name: str, document: str, files: NodeFiles) -> dict[str, Any]:
    return {"name": name, "sds_config": {
        "path_config_source": {"path": document, "watched_directory": {"path": files.sds_dir}},
        "resource_api_version": "V3"}}


def _common_tls(files: NodeFiles, peers: Sequence[str]) -> dict[str, Any]:
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificate_sds_secret_configs": [
            _sds(CERT_SECRET, f"{files.sds_dir}/cert.yaml", files)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": _matcher(p)} for p in peers]},
            "validation_context_sds_secret_config": _sds(
                BUNDLE_SECRET, f"{files.sds_dir}/bundle.yaml", files),
        },
    }


def downstream_tls(files: NodeFiles, peers: Sequence[str]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS_TYPES + "DownstreamTlsContext", "require_client_certificate": True,
        "common_tls_context": _common_tls(files, peers)}}


def upstream_tls(files: NodeFiles, peers: Sequence[str]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": TLS_TYPES + "UpstreamTlsContext", "common_tls_context": _common_tls(files, peers)}}


def original_dst_filters(*, tls_inspector: bool) -> list[dict[str, Any]]:
    filters = [{"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": EXT + "filters.listener.original_dst.v3.OriginalDst"}}]
    if tls_inspector:
        filters.append({"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": EXT + "filters.listener.tls_inspector.v3.TlsInspector"}})
    return filters


def static_cluster(name: str, host: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": CONNECT_TIMEOUT,
            "load_assignment": {"cluster_name": name, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": address(host, port)}}]}]},
            **extra}


def eds_cluster(name: str, files: NodeFiles, peers: Sequence[str]) -> dict[str, Any]:
    return {"name": name, "type": "EDS", "connect_timeout": CONNECT_TIMEOUT,
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            "transport_socket": upstream_tls(files, peers)}
