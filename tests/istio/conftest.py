"""Istio tests: one real istiod per session (tests/fixtures/istiod.py) and
Istio's own VM data plane (pilot-agent + Envoy) in VM namespaces."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.fixtures.istiod import Istiod, istiod
from tests.istio.mesh_agent import MeshAgentVm
from tests.istio.pilot_agent import PilotAgentVm

PilotAgentFactory = Callable[..., PilotAgentVm]
MeshAgentFactory = Callable[..., MeshAgentVm]


@pytest.fixture
def pilot_agent_vm(istiod: Istiod) -> Iterator[PilotAgentFactory]:
    """``pilot_agent_vm(label, namespace, service_account, labels={}, token=None,
    capture=True, start=True)``: a VM namespace on istiod's network with istioctl's
    files, Istio's capture and a ready pilot-agent + Envoy. All are stopped and
    removed after the test."""
    made: list[PilotAgentVm] = []
    base = Path(tempfile.mkdtemp(prefix=f"mesh-istio-vm-{os.getpid()}-"))
    base.chmod(0o755)

    def make(label: str, namespace: str, service_account: str,
             labels: Mapping[str, str] | None = None, token: str | None = None,
             capture: bool = True, start: bool = True) -> PilotAgentVm:
        vm = istiod.network.add_vm(label)
        files = istiod.vm_files(label, namespace, service_account, vm.ip, labels=labels,
                                token=token)
        agent = PilotAgentVm(istiod, vm, files, base / label, name=f"{label}-vm")
        made.append(agent)
        agent.install()
        if capture:
            agent.capture()
        if start:
            agent.start()
            agent.wait_ready()
        return agent

    yield make
    for agent in made:
        agent.stop()
        istiod.network.remove_vm(agent.vm)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mesh_agent_vm(istiod: Istiod) -> Iterator[MeshAgentFactory]:
    """``mesh_agent_vm(label, namespace, service_account, labels={}, token_ttl=3600,
    cert_ttl="24h", capture=False)``: a VM namespace on istiod's network with
    istioctl's files and a (not yet started) `mesh-agent run` in Istio mode. All
    are stopped and removed after the test."""
    made: list[MeshAgentVm] = []
    # Envoy (uid 1337) reads below here: every ancestor must be traversable.
    base = Path(tempfile.mkdtemp(prefix=f"mesh-agent-istio-{os.getpid()}-"))
    base.chmod(0o755)

    def make(label: str, namespace: str, service_account: str, *,
             labels: Mapping[str, str] | None = None, token_ttl: float = 3600,
             cert_ttl: str = "24h", capture: bool = False) -> MeshAgentVm:
        vm = istiod.network.add_vm(label)
        files = istiod.vm_files(label, namespace, service_account, vm.ip, labels=labels,
                                token=istiod.mint_token(namespace, service_account,
                                                        ttl=token_ttl))
        (base / label).mkdir(mode=0o755)
        agent = MeshAgentVm(istiod, vm, base / label, files, cert_ttl=cert_ttl,
                            capture=capture)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        istiod.network.remove_vm(agent.vm)
    shutil.rmtree(base, ignore_errors=True)


__all__ = ["istiod", "mesh_agent_vm", "pilot_agent_vm"]
