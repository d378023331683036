"""The README's first command keeps working: scripts/demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.netns


def test_demo_runs_the_mesh_end_to_end() -> None:
    out = subprocess.run([sys.executable, "scripts/demo.py", "--rotations", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=420, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    # By name: the DNS proxy's VIP, then calls answered by both VMs.
    assert re.search(r"240\.240\.0\.1\s+orders\.shop\.mesh", text), text[-4000:]
    assert "hello from the VM app on orders-1 (request /orders" in text
    assert re.search(r"answers: orders-1: [1-5], orders-2: [1-5]\n", text), text[-4000:]
    assert "inbound peer=spiffe://demo.mesh/ns/shop/sa/frontend" in text
    # Failover: orders-2's app stops, the calls go on on orders-1.
    assert "calls after the failover: all answered by orders-1" in text
    assert re.search(r"rotation \d+: serial", text) and "request through the mesh: ok" in text
    assert "MESH_ chains left in the VM's nat table: none" in text
    assert "agent exit code 0" in text
