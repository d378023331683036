"""The capture rules Istio mode applies, from istioctl's files through the
same path as the daemon and `mesh-agent capture` (effective_capture for
cluster.env's settings, control_plane_urls for the always-direct addresses),
against a golden file: istiod and its CA go direct once, on their port, and
nothing else of istiod's address escapes the proxy."""

from __future__ import annotations

import os
from pathlib import Path

from agent.capture.config import CaptureConfig
from agent.capture.exempt import url_exemptions
from agent.capture.iptables import NatState, render_apply
from agent.capture.plan import CaptureSettings, plan
from agent.config.model import control_plane_urls, effective_capture, load_config
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import agent_yaml, write_vm_files

GOLDEN = Path(__file__).parent / "golden" / "capture-ipv4.rules"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
ISTIOD_IP = "10.0.0.5"


def _rules(tmp_path: Path) -> tuple[str, CaptureConfig]:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=TestCA().bundle_pem,
                               istiod_ip=ISTIOD_IP, env_extra={"ISTIO_SVC_IP": "10.0.0.20"})
    path = tmp_path / "agent.yaml"
    path.write_text(agent_yaml(istio_dir, tmp_path / "state", extra=(
        "sidecar:\n  enabled: true\n  proxy_uid: 1337\n  proxy_gid: 1337\n"
        "capture:\n  enabled: true\n  proxy_uid: 1337\n  proxy_gid: 1337\n")))
    config = load_config(path)
    exempt = tuple(e for url, why in control_plane_urls(config) for e in url_exemptions(url, why))
    capture = effective_capture(config)
    family = plan(CaptureSettings(capture, 1337, 1337, exempt)).family(4)
    assert family is not None
    return render_apply(family, NatState(True, (), (), 0, 0, ())), capture


def test_istio_mode_plan_matches_golden(tmp_path: Path) -> None:
    text, _ = _rules(tmp_path)
    if UPDATE:
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), f"{GOLDEN} differs (UPDATE_GOLDEN=1 to accept)"


def test_istiod_goes_direct_once_on_its_port(tmp_path: Path) -> None:
    text, capture = _rules(tmp_path)
    mentions = [line for line in text.splitlines() if ISTIOD_IP in line]
    assert mentions == [f"-A MESH_OUTPUT -d {ISTIOD_IP}/32 -p tcp -m tcp --dport 15012 -j RETURN"]
    assert capture.exclude_outbound_cidrs == ()
