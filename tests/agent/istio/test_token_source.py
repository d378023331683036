"""``istio.token_source``: the config shapes it allows and refuses, and what ``check``
and the capture exemptions make of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.config.model import control_plane_urls
from agent.istio import preflight
from tests.fixtures.certs import TestCA
from tests.fixtures.istio_vm import agent_yaml, write_vm_files

REGISTRAR = "registrar:\n  url: https://10.1.2.3:8443\n  ca_file: /etc/ca.pem\n"


def _config(tmp_path: Path, extra: str) -> Path:
    istio_dir = write_vm_files(tmp_path / "istio", root_pem=TestCA().bundle_pem)
    (istio_dir / "istio-token").unlink()  # registrar mode needs no token on the VM
    path = tmp_path / "agent.yaml"
    path.write_text(agent_yaml(istio_dir, tmp_path / "state").replace(
        "istio:\n", "istio:\n" + "".join(f"  {line}\n" for line in extra.splitlines()
                                         if not line.startswith("!")), 1)
        + "".join(line[1:] + "\n" for line in extra.splitlines() if line.startswith("!")))
    return path


def test_registrar_source_needs_and_uses_the_registrar_section(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, "token_source: registrar\ntoken_audience: istio-ca\n"
                                 + "".join("!" + x for x in REGISTRAR.splitlines(True))))
    assert config.istio is not None and config.istio.token_from_registrar
    assert config.istio.token_audience == "istio-ca"
    assert config.registrar is not None and config.registrar.url == "https://10.1.2.3:8443"
    # The registrar is dialled from the VM: exempt from capture like istiod.
    assert ("https://10.1.2.3:8443", "registrar") in control_plane_urls(config)
    findings = {f.name: f for f in preflight.run(config.istio)}
    assert findings["istio-token"].ok and "mesh-registrar" in findings["istio-token"].detail


@pytest.mark.parametrize(("extra", "key", "allowed"), [
    ("token_source: registrar", "istio.token_source", "registrar: section"),
    ("token_source: vault", "istio.token_source", "file|registrar"),
    ("token_audience: istio-ca", "istio.token_audience", "token_source: registrar"),
    ("token_source: registrar\ntoken_audience: 'a b'\n"
     + "".join("!" + x for x in REGISTRAR.splitlines(True)), "istio.token_audience",
     "without spaces"),
    ("".join("!" + x for x in REGISTRAR.splitlines(True)), "mesh.type",
     "token_source: registrar"),
])
def test_refused_shapes_name_the_key(tmp_path: Path, extra: str, key: str,
                                     allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, extra))
    assert key in str(err.value) and allowed in str(err.value), str(err.value)
