"""A certificate with an unknown X.509 version in root-cert.pem is a config
error naming the file, not an exception: cryptography raises ``InvalidVersion``,
which is no ValueError (the agent_state fuzz target found it in the credential
store; its crasher holds such a certificate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509

from agent.istio.roots import parse_roots
from meshcore.config.errors import ConfigError
from tests.fuzz.agent_state import split

SEED = Path(__file__).resolve().parents[2] / "fuzz/seeds/agent_state/crash-cert-invalid-version"


def test_root_with_unknown_version_is_a_config_error(tmp_path: Path) -> None:
    chain = split(SEED.read_bytes())["cert-chain.pem"]
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", chain, re.S)
    bad = blocks[-1] + b"\n"
    with pytest.raises(x509.InvalidVersion):
        x509.load_pem_x509_certificate(bad)
    path = tmp_path / "root-cert.pem"
    with pytest.raises(ConfigError) as caught:
        parse_roots(bad, path)
    assert caught.value.file == f"{path}:1"  # file:line, as for every istioctl file
