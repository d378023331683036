"""Pure: Envoy TLS contexts and the file-based SDS secret documents.

Both secrets are delivered through ``path_config_source`` with a
``watched_directory`` (the ``sds/`` dir), and each secret names its PEM files
through the ``sds/current`` symlink with the same watched directory. When the
agent renames a new ``current`` link into place, Envoy sees the move, re-reads
key and chain together (it checks they were not modified between the two
reads) and new handshakes use the new certificate; no restart, no dropped
connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.sidecar.settings import BUNDLE_SECRET, CERT_SECRET, EnvoyPaths

TLS_TRANSPORT = "envoy.transport_sockets.tls"
_TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
SECRET_TYPE = _TLS_TYPES + "Secret"
# Mesh traffic is TLS 1.3-capable but must interoperate with Istio's Envoys, which
# default to a 1.2 minimum for mTLS.
_TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_2"}


def sds_ref(name: str, document: str, paths: EnvoyPaths) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": document,
                "watched_directory": {"path": str(paths.sds_dir)},
            },
            "resource_api_version": "V3",
        },
    }


def san_matchers(patterns: Sequence[str]) -> list[dict[str, Any]]:
    """URI SAN matchers: ``spiffe://td/a/*`` is a prefix, anything else is exact."""
    out: list[dict[str, Any]] = []
    for pattern in patterns:
        matcher = {"prefix": pattern[:-1]} if pattern.endswith("/*") else {"exact": pattern}
        out.append({"san_type": "URI", "matcher": matcher})
    return out


def common_tls_context(paths: EnvoyPaths, peers: Sequence[str]) -> dict[str, Any]:
    """Present the workload cert; accept only ``peers`` chaining to the bundle."""
    return {
        "tls_params": dict(_TLS_PARAMS),
        "tls_certificate_sds_secret_configs": [
            sds_ref(CERT_SECRET, str(paths.cert_secret_file), paths)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": san_matchers(peers)},
            "validation_context_sds_secret_config": sds_ref(
                BUNDLE_SECRET, str(paths.bundle_secret_file), paths),
        },
    }


def downstream_tls(paths: EnvoyPaths, peers: Sequence[str]) -> dict[str, Any]:
    return {
        "name": TLS_TRANSPORT,
        "typed_config": {
            "@type": _TLS_TYPES + "DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": common_tls_context(paths, peers),
        },
    }


def upstream_tls(paths: EnvoyPaths, peer: str) -> dict[str, Any]:
    return {
        "name": TLS_TRANSPORT,
        "typed_config": {
            "@type": _TLS_TYPES + "UpstreamTlsContext",
            "common_tls_context": common_tls_context(paths, [peer]),
        },
    }


def secret_documents(paths: EnvoyPaths) -> dict[str, dict[str, Any]]:
    """The two SDS files, keyed by file path. They never change between
    generations: they point at ``sds/current/*``."""
    watched = {"path": str(paths.sds_dir)}
    cert = {
        "@type": SECRET_TYPE,
        "name": CERT_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": str(paths.cert_chain)},
            "private_key": {"filename": str(paths.key)},
            "watched_directory": watched,
        },
    }
    bundle = {
        "@type": SECRET_TYPE,
        "name": BUNDLE_SECRET,
        "validation_context": {
            "trusted_ca": {"filename": str(paths.bundle)},
            "watched_directory": watched,
        },
    }
    return {
        str(paths.cert_secret_file): {"resources": [cert]},
        str(paths.bundle_secret_file): {"resources": [bundle]},
    }
