"""cluster.env's capture settings mapped onto the agent's capture config.

Kept apart from the data plane so the capture CLI can use it without loading
grpcio (the SDS server) or anything else of Istio mode's runtime.
"""

from __future__ import annotations

from dataclasses import replace

from agent.capture.config import CaptureConfig
from agent.istio.vm import IstioVM

__all__ = ["capture_from_cluster_env"]


def capture_from_cluster_env(capture: CaptureConfig, vm: IstioVM) -> CaptureConfig:
    """cluster.env's capture settings onto the capture config (one place to adapt).

    ``ISTIO_INBOUND_PORTS`` ('*' = every port), ``ISTIO_LOCAL_EXCLUDE_PORTS``
    (inbound ports never captured), ``ISTIO_SERVICE_CIDR`` ('*' = every
    destination) and ``ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE``; IPv6 only for a
    node with an IPv6 address, as istiod configures Envoy. istiod's and the
    CA's addresses are not added here: like the registrar in the static mode,
    they are the control plane (``agent.config.model.control_plane_urls``),
    which the capture planner always exempts on its port, so a broken Envoy
    can never cut the agent off from the control plane that would repair it.
    """
    # istiod gives Envoy IPv6 listeners only for a proxy with an IPv6 address
    # (INSTANCE_IPS: ISTIO_SVC_IP, else the address facing istiod): an IPv4 VM's
    # Envoy listens on 0.0.0.0 alone, and IPv6 redirected to it would be lost.
    node_ip = vm.instance_ip or vm.resolve(vm.discovery)
    return replace(
        capture,
        ipv6=capture.ipv6 and ":" in node_ip,
        inbound_ports=vm.inbound_ports,
        exclude_inbound_ports=tuple(sorted({*capture.exclude_inbound_ports,
                                            *vm.exclude_inbound_ports})),
        include_outbound_cidrs=vm.service_cidrs,
        exclude_outbound_ports=tuple(sorted({*capture.exclude_outbound_ports,
                                             *vm.exclude_outbound_ports})),
    )
