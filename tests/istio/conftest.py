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
from tests.istio.pilot_agent import PilotAgentVm

PilotAgentFactory = Callable[..., PilotAgentVm]


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


__all__ = ["istiod", "pilot_agent_vm"]
