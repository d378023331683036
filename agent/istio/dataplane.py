"""Istio mode's part of the data plane: the SDS server Envoy reads its
certificate from, the ADS bootstrap, and capture settings from cluster.env.

``agent.daemon.dataplane`` calls this at the same points as the static mode's
file SDS: ``start`` before Envoy, ``publish`` with every credential
generation, ``stop`` after Envoy has drained.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from agent.credentials import Credentials
from agent.istio.bootstrap import render_ads_bootstrap
from agent.istio.capture import capture_from_cluster_env  # noqa: F401  (re-exported)
from agent.istio.node import IstioNode, build_node, local_ip_toward
from agent.istio.sds_server import SdsServer, SecretSet
from agent.istio.vm import IstioVM
from agent.sidecar.config import SidecarConfig
from agent.sidecar.settings import MeshSettings

log = logging.getLogger(__name__)
SDS_SOCKET = "sds.sock"


class IstioDataPlane:
    def __init__(self, vm: IstioVM, sidecar: SidecarConfig, envoy_dir: Path) -> None:
        self.vm = vm
        self.sidecar = sidecar
        self.istiod_ip = vm.resolve(vm.discovery)
        self.sds = SdsServer(envoy_dir / SDS_SOCKET)
        self._node: IstioNode | None = None

    @property
    def node(self) -> IstioNode:
        if self._node is None:
            ip = self.vm.instance_ip or local_ip_toward(self.istiod_ip)
            self._node = build_node(self.vm, ip=ip, hostname=socket.gethostname())
            log.info("istio node", extra={"node_id": self._node.id})
        return self._node

    def render(self, mesh: MeshSettings) -> dict[str, Any]:
        return render_ads_bootstrap(self.sidecar, self.node, istiod=self.vm.discovery,
                                    istiod_ip=self.istiod_ip, sds_socket=self.sds.socket_path)

    async def start(self, proxy_gid: int | None) -> None:
        self.sds = SdsServer(self.sds.socket_path, gid=proxy_gid)
        await self.sds.start()

    def publish(self, creds: Credentials) -> None:
        chain = b"".join(c.pem() for c in creds.chain)
        bundle = b"".join(c.pem() for c in creds.bundle)
        self.sds.update(SecretSet(version=creds.generation, chain_pem=chain,
                                  key_pem=creds.key_pem, bundle_pem=bundle))

    async def stop(self) -> None:
        await self.sds.stop()
