"""docs/cloud-init.md layouts 2 and 3 on a real VM: an image baked with the
package, its settings and trust anchor; the user data only enables the
service; the VM proves who it is with GCE instance identity (no secret at
all), served by the fake metadata server through qemu at 169.254.169.254."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.fakes.cloud_pki import CloudPki
from tests.fakes.gce_metadata import FakeGce
from tests.fakes.serve import serving
from tests.fixtures.registrar import RegistrarProcess
from tests.packaging.build import Packages
from tests.vm import image, qemu
from tests.vm.userdata import GUEST_REGISTRAR_PORT

pytestmark = [pytest.mark.vm, pytest.mark.timeout(max(900, 600 + qemu.BOOT_TIMEOUT))]

PAYLOAD = Path(__file__).parent / "payloads" / "baked_image.sh"
SPIFFE_ID = "spiffe://example.org/ns/prod/sa/gce-vm"
# qemu's user network is moved to the metadata server's /24 so both forwards fit.
NETWORK = "169.254.169.0/24"
GUEST_REGISTRAR = "169.254.169.100"
ENABLE_ONLY = "#cloud-config\nruncmd:\n  - [systemctl, enable, --now, mesh-agent.service]\n"


@dataclass
class Booted:
    out: Path
    seconds: float
    registrar_log: str


@pytest.fixture(scope="module")
def booted(packages: Packages, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    work = tmp_path_factory.mktemp("baked-vm")
    pki = CloudPki.create(work / "pki")
    with serving(FakeGce(pki).app()) as metadata_url:
        reg = RegistrarProcess(
            work / "registrar", groups={"gce": ("prod", "gce-vm", 300)},
            server_names=["localhost", "127.0.0.1", GUEST_REGISTRAR],
            config={"evidence": {"gce": {
                "jwks_url": metadata_url + "/oauth2/v3/certs", "max_instance_age": "1h",
                "groups": [{"group": "gce", "match": {"project_id": "mesh-test"}}]}}})
        (work / "registrar").mkdir()
        reg.start()
        try:
            settings = {
                "registrar": {"url": f"https://{GUEST_REGISTRAR}:{GUEST_REGISTRAR_PORT}"},
                "attestation": {"method": "gce", "gce": {
                    # no DNS in the test guest; the address is the real one
                    "metadata_url": "http://169.254.169.254/computeMetadata/v1"}},
            }
            baked = image.bake((packages.agent_deb,), files={
                "/etc/mesh-agent/registrar-ca.pem": reg.ca_file.read_bytes(),
                "/etc/mesh-agent/agent.d/50-image.yaml": yaml.safe_dump(settings).encode(),
            })
            seed = qemu.make_seed(work, ENABLE_ONLY, f"iid-{uuid.uuid4()}")
            metadata_port = int(metadata_url.rsplit(":", 1)[1])
            vm = qemu.VM(image=baked, workdir=work, seed=seed, network=NETWORK, forwards=(
                qemu.Forward(GUEST_REGISTRAR, GUEST_REGISTRAR_PORT, reg.port),
                qemu.Forward("169.254.169.254", 80, metadata_port)))
            vm.prepare(PAYLOAD.read_text())
            started = time.monotonic()
            vm.boot()
            seconds = time.monotonic() - started
            rc, output = vm.result(1)
            assert rc == 0, output
            print(f"\nbaked-image VM boot: {seconds:.1f}s")
            yield Booted(vm.share / "out" / "boot1", seconds, reg.log_text())
        finally:
            reg.stop()


def test_user_data_only_enables_the_service(booted: Booted) -> None:
    assert "write_files" not in (booted.out / "userdata.txt").read_text()
    props = dict(line.split("=", 1) for line in (booted.out / "props").read_text().splitlines())
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), \
        (booted.out / "journal.txt").read_text()[-3000:]
    assert props["UnitFileState"] == "enabled"


def test_gce_identity_without_any_secret(booted: Booted) -> None:
    assert "bootstrap-token" not in (booted.out / "etc-listing").read_text()
    leaf = x509.load_pem_x509_certificates((booted.out / "cert-chain.pem").read_bytes())[0]
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [SPIFFE_ID]
    assert f"attest ok spiffe_id={SPIFFE_ID}" in booted.registrar_log
