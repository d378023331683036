"""The README's first command keeps working: scripts/demo end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.netns


def test_demo_runs_the_mesh_end_to_end() -> None:
    out = subprocess.run([sys.executable, "scripts/demo.py", "--rotations", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=240, check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "hello from the VM app (request /orders" in text
    assert "inbound peer=spiffe://demo.mesh/ns/shop/sa/frontend" in text
    assert "rotation 1:" in text and "request through the mesh: ok" in text
    assert "MESH_ chains left in the VM's nat table: none" in text
    assert "agent exit code 0" in text
