"""``auto``: DMI first, then parallel probes under one deadline, then the token."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.attest import detect, registry
from agent.attest.config import AttestationConfig
from tests.fakes.azure_metadata import FakeAzure
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.ec2_metadata import FakeEc2
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving


def config(base: str, *, timeout: float = 1.0, method: str = "auto") -> AttestationConfig:
    # The layout of the real defaults: one link-local address, three path roots.
    return AttestationConfig(method=method, token_file=Path("/nonexistent/token"),
                             gce_metadata_url=base + "/computeMetadata/v1",
                             aws_metadata_url=base, azure_metadata_url=base + "/metadata",
                             probe_timeout=timeout)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """Accepts TCP connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def dmi_root(tmp_path: Path, **fields: str) -> Path:
    base = tmp_path / "sys/class/dmi/id"
    base.mkdir(parents=True)
    for name, value in fields.items():
        (base / name).write_text(value + "\n")
    return tmp_path


@pytest.mark.parametrize(("fields", "expected"), [
    ({"sys_vendor": "Google", "product_name": "Google Compute Engine"}, "gce"),
    ({"sys_vendor": "Amazon EC2", "product_name": "t3.micro"}, "aws"),
    ({"sys_vendor": "Xen", "bios_version": "4.11.amazon"}, "aws"),
    ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
      "chassis_asset_tag": detect.AZURE_ASSET_TAG}, "azure"),
    # Plain Hyper-V has Azure's vendor and product but not its asset tag.
    ({"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine"}, None),
    ({"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)"}, None),
    ({}, None),
])
def test_dmi_classification(tmp_path: Path, fields: dict[str, str], expected: str | None):
    assert detect.classify_dmi(detect.read_dmi(dmi_root(tmp_path, **fields))) == expected


def test_dmi_decides_without_probing(tmp_path: Path, black_hole: str,
                                     caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    root = dmi_root(tmp_path, sys_vendor="Google")
    chosen = asyncio.run(registry.choose(config(black_hole, timeout=30), sysfs_root=root))
    assert chosen.name == "gce"
    assert any(getattr(r, "attestor", None) == "gce" and getattr(r, "by", None) == "dmi"
               for r in caplog.records)


@pytest.mark.parametrize("cloud", ["gce", "aws", "azure"])
def test_probes_pick_the_answering_cloud(pki: CloudPki, tmp_path: Path, cloud: str):
    fake = {"gce": FakeGce, "aws": FakeEc2, "azure": FakeAzure}[cloud](pki)
    with serving(fake.app()) as url:
        chosen = asyncio.run(registry.choose(config(url), sysfs_root=tmp_path))
        assert chosen.name == cloud
        status = asyncio.run(registry.metadata_status(config(url)))
    assert {r.name: r.answered for r in status} == {
        name: name == cloud for name in ("gce", "aws", "azure")}


def test_nothing_answers_falls_back_to_token_within_deadline(tmp_path: Path, black_hole: str,
                                                            caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    chosen = asyncio.run(registry.choose(config(black_hole, timeout=0.5), sysfs_root=tmp_path))
    elapsed = time.monotonic() - started
    assert chosen.name == "token"
    # Not a performance figure: proof the probes are bounded by the deadline
    # (a hang would take the black hole's forever).
    assert elapsed < 0.5 + 2.0, elapsed
    assert any(getattr(r, "attestor", None) == "token" for r in caplog.records)


def test_explicit_method_wins_before_probing(tmp_path: Path, black_hole: str):
    root = dmi_root(tmp_path, sys_vendor="Google")
    chosen = asyncio.run(registry.choose(config(black_hole, method="azure"), sysfs_root=root))
    assert chosen.name == "azure"
