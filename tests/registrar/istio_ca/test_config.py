"""The ``istio_ca:`` section: errors name the file, the key and what is allowed,
and ``serve`` exits 78 on them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcore.config.errors import ConfigError
from registrar.config import build_config

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "registrar.yaml"
    path.write_text(yaml.safe_dump({"trust_domain": "example.org", "listen": "127.0.0.1:8443",
                                    "state_dir": str(tmp_path / "state"), **extra}))
    return path


def test_defaults_and_values(tmp_path: Path) -> None:
    config = build_config(write(tmp_path, istio_ca={}))
    assert config.istio_ca is not None
    assert (config.istio_ca.host, config.istio_ca.port) == ("127.0.0.1", 15012)
    assert config.istio_ca.audiences == ("istio-ca",)
    assert build_config(write(tmp_path)).istio_ca is None


@pytest.mark.parametrize(("section", "key", "allowed"), [
    ({"listen": "127.0.0.1:8443"}, "istio_ca.listen", "a port of its own"),
    ({"listen": "nowhere"}, "istio_ca.listen", "an IP address and port"),
    ({"audiences": ["kubernetes"]}, "istio_ca.audiences", "listed in oidc.audiences"),
    ({"audiences": []}, "istio_ca.audiences", "non-empty"),
    ({"rate": {"per_second": 0}}, "istio_ca.rate.per_second", ""),
    ({"port": 1}, "istio_ca", "listen"),
])
def test_errors_name_file_key_and_allowed(tmp_path: Path, section: dict[str, Any], key: str,
                                          allowed: str) -> None:
    path = write(tmp_path, istio_ca=section,
                 oidc={"issuer": "https://127.0.0.1:8443", "audiences": ["istio-ca"]})
    with pytest.raises(ConfigError) as caught:
        build_config(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {key}"), text
    assert allowed in text, text


def test_serve_exits_78(tmp_path: Path) -> None:
    path = write(tmp_path, istio_ca={"listen": "127.0.0.1:8443"})
    result = subprocess.run([sys.executable, "-m", "registrar", "serve", "--config", str(path)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 78, result
    assert "istio_ca.listen" in result.stderr
