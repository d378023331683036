"""Istio config for istiod's ``--configDir``, as YAML text, built from a few
parameters so tests read as intent ("echo in vm-app, served by this VM")."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

ROOT_NAMESPACE = "istio-system"


def _labels(labels: Mapping[str, str], indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{k}: {json.dumps(v)}\n" for k, v in sorted(labels.items()))


def service_entry(name: str, namespace: str, host: str, vip: str, port: int,
                  selector: Mapping[str, str], protocol: str = "HTTP") -> str:
    """A mesh-internal service whose endpoints are the WorkloadEntries ``selector``
    matches. ``vip`` is given explicitly: without Kubernetes, istiod's IP
    auto-allocation controller does not run, and DNS capture needs an address."""
    return (f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  hosts: [{host}]\n  addresses: [{vip}]\n"
            f"  location: MESH_INTERNAL\n  resolution: STATIC\n"
            f"  ports:\n  - number: {port}\n    name: {protocol.lower()}-{port}\n"
            f"    protocol: {protocol}\n    targetPort: {port}\n"
            f"  workloadSelector:\n    labels:\n{_labels(selector, 6)}")


def workload_entry(name: str, namespace: str, address: str, service_account: str,
                   labels: Mapping[str, str]) -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  address: {address}\n  serviceAccount: {service_account}\n"
            f"  labels:\n{_labels(labels, 4)}")


def workload_group(name: str, namespace: str, service_account: str,
                   labels: Mapping[str, str], probe_port: int | None = None) -> str:
    probe = f"  probe:\n    httpGet:\n      port: {probe_port}\n" if probe_port else ""
    return (f"apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  metadata:\n    labels:\n{_labels(labels, 6)}"
            f"  template:\n    serviceAccount: {service_account}\n{probe}")


def peer_authentication_strict(name: str = "default",
                               namespace: str = ROOT_NAMESPACE) -> str:
    """Mesh-wide STRICT mTLS when ``namespace`` is the root namespace."""
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  mtls:\n    mode: STRICT\n")


def deny_principals(name: str, namespace: str, selector: Mapping[str, str],
                    principals: Sequence[str]) -> str:
    """DENY calls from these SPIFFE principals (``TD/ns/NS/sa/SA``) to ``selector``."""
    listed = ", ".join(json.dumps(p) for p in principals)
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"spec:\n  action: DENY\n  selector:\n    matchLabels:\n{_labels(selector, 6)}"
            f"  rules:\n  - from:\n    - source:\n        principals: [{listed}]\n")


def mesh_config(trust_domain: str, discovery_address: str) -> str:
    """istiod's mesh config. Access logs are JSON with the peer's SPIFFE ID, so
    tests can read who called whom from a sidecar's stdout."""
    log_format = json.dumps({
        "start": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
        "code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
        "peer": "%DOWNSTREAM_PEER_URI_SAN%", "local": "%DOWNSTREAM_LOCAL_URI_SAN%",
        "upstream_peer": "%UPSTREAM_PEER_URI_SAN%", "cluster": "%UPSTREAM_CLUSTER%",
        "tls": "%DOWNSTREAM_TLS_VERSION%", "authority": "%REQ(:AUTHORITY)%"})
    return (f"trustDomain: {trust_domain}\nrootNamespace: {ROOT_NAMESPACE}\n"
            f"enableAutoMtls: true\naccessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"
            f"accessLogFormat: {json.dumps(log_format)}\n"
            f"defaultConfig:\n  discoveryAddress: {discovery_address}\n")
