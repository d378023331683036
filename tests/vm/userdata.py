"""cloud-init user data for the VM tests: docs/cloud-init.md's layout 1 ("join
token and registrar address") read from the page itself, so the VM boots what
operators are told to write, with only the two placeholders filled in (the
registrar's certificate and the token). No exclusion, no test-only key.

What the test harness needs beyond that lives in the test image, never in the
user data (``image_files``): a hosts entry for the documented registrar name,
and a 90- drop-in (the documented slot for local overrides) with the slow
Envoy start of an emulated CPU and a faster renewal ratio.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "cloud-init.md"
GUEST_REGISTRAR = "10.0.2.100"  # qemu guestfwd -> the host registrar's loopback port
GUEST_REGISTRAR_PORT = 8443
CA_PATH = "/etc/mesh-agent/registrar-ca.pem"
TOKEN_PATH = "/etc/mesh-agent/bootstrap-token"
DROP_IN_PATH = "/etc/mesh-agent/agent.d/10-cloud-init.yaml"
TOKEN_PLACEHOLDER = "REPLACE-WITH-THE-TOKEN"


def documented_text() -> str:
    """The first ``yaml`` block under docs/cloud-init.md's "## 1." heading, verbatim."""
    text = DOC.read_text()
    section = text[text.index("\n## 1. "):]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, f"{DOC}: no yaml block in layout 1"
    assert match.group(1).startswith("#cloud-config\n"), "layout 1 is not #cloud-config"
    return match.group(1)


def documented_user_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(documented_text())
    return data


def documented_files() -> dict[str, str]:
    return {f["path"]: f["content"] for f in documented_user_data()["write_files"]}


def registrar_url() -> str:
    """The registrar URL the documented drop-in names."""
    url: str = yaml.safe_load(documented_files()[DROP_IN_PATH])["registrar"]["url"]
    return url


def registrar_host() -> str:
    host = urlsplit(registrar_url()).hostname
    assert host, registrar_url()
    return host


def join_token_user_data(*, ca_pem: str, token: str) -> str:
    """Layout 1 as printed, with the trust anchor and the token filled in; the
    rest of the text is the page's, byte for byte."""
    text = documented_text()
    pem = re.search(r"^( +)-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n",
                    text, re.DOTALL | re.MULTILINE)
    assert pem, "layout 1 has no certificate placeholder"
    indented = "".join(pem.group(1) + line for line in ca_pem.strip().splitlines(keepends=True))
    text = text[:pem.start()] + indented + "\n" + text[pem.end():]
    assert text.count(TOKEN_PLACEHOLDER) == 1, "layout 1 has no token placeholder"
    text = text.replace(TOKEN_PLACEHOLDER, token)
    # Only those two values differ from the page.
    filled = yaml.safe_load(text)
    for got, doc in zip(filled["write_files"], documented_user_data()["write_files"],
                        strict=True):
        assert got["path"] == doc["path"]
        assert got["path"] in (CA_PATH, TOKEN_PATH) or got == doc
    ca = next(f for f in filled["write_files"] if f["path"] == CA_PATH)
    assert ca["content"] == ca_pem.strip() + "\n"
    return text


def image_files(*, renew_at: float, ready_timeout: str = "150s") -> dict[str, bytes]:
    """Files the test image carries for the harness (not user data, not the package)."""
    hosts = ("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
             f"# test harness: qemu forwards this address to the host's registrar\n"
             f"{GUEST_REGISTRAR}\t{registrar_host()}\n")
    local = {
        # Envoy starts slowly under TCG emulation; the default 30 s is for real CPUs.
        "sidecar": {"ready_timeout": ready_timeout},
        # Renew often enough that one boot sees renewals under capture.
        "rotation": {"renew_at": renew_at},
    }
    return {
        "/etc/hosts": hosts.encode(),
        "/etc/mesh-agent/agent.d/90-vmtest.yaml": yaml.safe_dump(local).encode(),
    }
