"""``evidence.<cloud>`` options in registrar.yaml: errors name file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshcore.clock import SystemClock
from meshcore.config.errors import ConfigError
from registrar.attestation.cloud_options import aws_verifier, azure_verifier, gce_verifier
from registrar.config import Group, RegistrarConfig
from tests.fakes.cloud_pki import CloudPki


def config(tmp_path: Path) -> RegistrarConfig:
    group = Group("web", "prod", "web-vm", "example.org", 3600.0)
    return RegistrarConfig(
        source_file=str(tmp_path / "registrar.yaml"), trust_domain="example.org",
        host="127.0.0.1", port=1, workers=1, state_dir=tmp_path, database=tmp_path / "db",
        ca=None, tls_cert=tmp_path, tls_key=tmp_path, challenge_ttl=60,  # type: ignore[arg-type]
        limits=None, groups={"web": group}, evidence={}, log_level="info")  # type: ignore[arg-type]


RULE = [{"group": "web", "match": {"project_id": "p"}}]


@pytest.mark.parametrize(("build", "options", "key", "hint"), [
    (gce_verifier, {"groups": [{"group": "nope"}]}, "evidence.gce.groups", "web"),
    (gce_verifier, {"groups": [{"group": "web", "match": {"zone_typo": "x"}}]},
     "evidence.gce.groups", "project_id"),
    (gce_verifier, {"groups": RULE, "leeway": "120s"}, "evidence.gce.leeway", "60"),
    (gce_verifier, {"groups": RULE, "jwks": "x"}, "evidence.gce", "jwks_url"),
    (gce_verifier, {}, "evidence.gce.groups", "group"),
    (aws_verifier, {"groups": [{"group": "web"}], "reattest": "sometimes"},
     "evidence.aws.reattest", "evict"),
    (aws_verifier, {"groups": [{"group": "web"}], "cert_dir": "/nonexistent"},
     "evidence.aws.cert_dir", "partition"),
    (azure_verifier, {"groups": [{"group": "web"}]}, "evidence.azure.root_file", ""),
])
def test_errors_name_the_key(tmp_path: Path, build: Any, options: dict[str, Any], key: str,
                             hint: str):
    with pytest.raises(ConfigError) as caught:
        build(options, config(tmp_path), SystemClock())
    assert caught.value.file == str(tmp_path / "registrar.yaml")
    assert caught.value.key.startswith(key), caught.value
    assert hint in str(caught.value)


def test_valid_options_build(tmp_path: Path, pki: CloudPki):
    cfg = config(tmp_path)
    clock = SystemClock()
    assert gce_verifier({"groups": RULE, "max_instance_age": "1h"}, cfg,
                        clock).evidence_type == "gce"
    assert aws_verifier({"groups": [{"group": "web"}], "cert_dir": str(pki.root / "aws")},
                        cfg, clock).evidence_type == "aws"
    assert azure_verifier({"groups": [{"group": "web"}],
                           "root_file": str(pki.root / "azure/root.pem")},
                          cfg, clock).evidence_type == "azure"
