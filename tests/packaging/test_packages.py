"""Issue 6, item 7: the .deb installs on clean Debian 12 and 13 chroots and
runs; its maintainer scripts create safe users, keep identity on upgrade and
purge everything; the .rpm lists the right files and passes rpmlint; lintian
is clean (each override is justified in packaging/lintian/). Issue 9, item 1:
each package ships its own program, the shared core and its own dependencies
only.

Slow set (marked vm): needs scripts/bootstrap-vm's tools and the cached rootfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.build import REPO, Packages, build_packages
from tests.packaging.chroot import clean_chroot
from tests.vm.image import RELEASES, Release

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def packages() -> Packages:
    return build_packages()


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.name)
def test_deb_installs_runs_and_purges_clean(packages: Packages, release: Release) -> None:
    with clean_chroot(release) as ch:
        python = ch.run("python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
        assert python.stdout.strip() == release.python
        before = set(ch.run("find", "/etc", "/var/lib", "/usr", "-xdev").stdout.split())
        deb = ch.copy_in(packages.agent_deb)
        ch.run("dpkg", "-i", deb)
        version = ch.run("mesh-agent", "--version")
        assert version.stdout.strip() == "mesh-agent 0.1.0"

        # Users: dedicated, non-root, distinct.
        agent = ch.run("getent", "passwd", "mesh-agent").stdout.split(":")
        proxy = ch.run("getent", "passwd", "mesh-proxy").stdout.split(":")
        assert agent[2] != "0" and proxy[2] != "0" and agent[2] != proxy[2]
        assert proxy[6].strip() == "/usr/sbin/nologin"
        # /etc/mesh-agent: root:mesh-agent with the sticky bit (see the unit).
        stat = ch.run("stat", "-c", "%a %U %G", "/etc/mesh-agent").stdout.split()
        assert stat == ["1770", "root", "mesh-agent"]
        # An unconfigured agent refuses to run with EX_CONFIG (no restart loop).
        unconfigured = ch.run("mesh-agent", "check", check=False)
        assert unconfigured.returncode == 78, unconfigured.stderr
        assert "registrar" in unconfigured.stderr

        # Upgrade path (reinstall runs preinst upgrade + postinst configure <old>):
        # identity and state survive, the users keep their UIDs.
        ch.path("/var/lib/mesh-agent").mkdir(exist_ok=True)
        ch.path("/var/lib/mesh-agent/state.json").write_text('{"identity": "kept"}')
        ch.run("dpkg", "-i", deb)
        assert ch.path("/var/lib/mesh-agent/state.json").read_text() == '{"identity": "kept"}'
        assert ch.run("getent", "passwd", "mesh-agent").stdout.split(":")[2] == agent[2]

        ch.path("/etc/mesh-agent/agent.d/10-cloud-init.yaml").write_text("registrar: {}\n")
        ch.path("/etc/mesh-agent/bootstrap-token").write_text("secret")
        ch.run("dpkg", "--purge", "mesh-agent")
        after = set(ch.run("find", "/etc", "/var/lib", "/usr", "-xdev").stdout.split())
        left = sorted(p for p in after - before
                      if not p.startswith(("/var/lib/dpkg", "/var/lib/systemd/deb-systemd")))
        # The users stay on purge (Debian policy: no UID reuse), nothing else.
        assert left == [], left
        assert ch.run("getent", "passwd", "mesh-proxy", check=False).returncode == 0


def test_preinst_refuses_a_root_proxy_user(packages: Packages) -> None:
    with clean_chroot() as ch:
        # An existing mesh-proxy with UID 0 would exempt root's traffic from capture.
        ch.run("useradd", "--non-unique", "--uid", "0", "--gid", "0", "--no-create-home",
               "mesh-proxy")
        proc = ch.run("dpkg", "-i", ch.copy_in(packages.agent_deb), check=False)
        assert proc.returncode != 0
        assert "UID 0" in proc.stderr
        assert not ch.path("/usr/bin/mesh-agent").exists()


def test_preinst_refuses_a_shared_proxy_uid(packages: Packages) -> None:
    with clean_chroot() as ch:
        ch.run("useradd", "--system", "--no-create-home", "someapp")
        uid = ch.run("id", "-u", "someapp").stdout.strip()
        ch.run("useradd", "--non-unique", "--uid", uid, "--no-create-home", "mesh-proxy")
        proc = ch.run("dpkg", "-i", ch.copy_in(packages.agent_deb), check=False)
        assert proc.returncode != 0
        assert "shared with another user" in proc.stderr


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r.name)
def test_registrar_deb_installs_and_runs(packages: Packages, release: Release) -> None:
    with clean_chroot(release) as ch:
        ch.run("dpkg", "-i", ch.copy_in(packages.registrar_deb))
        assert ch.run("mesh-registrar", "--version").stdout.strip() == "mesh-registrar 0.1.0"
        ch.run("mesh-registrar", "init", "--state-dir", "/var/lib/mesh-registrar",
               "--trust-domain", "example.org")
        assert ch.path("/var/lib/mesh-registrar/ca-key.pem").exists()


def _deb_list(deb: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    names = subprocess.run(["tar", "-t"], input=listing, capture_output=True, check=True).stdout
    return {"/" + n.removeprefix("./").rstrip("/") for n in names.decode().split()}


# Importable names of the registrar's own dependencies (pyproject extra `registrar`).
REGISTRAR_ONLY = ("aiohttp", "uvloop", "jwt", "asn1crypto", "multidict", "yarl")
AGENT_ONLY = ("tenacity", "systemd")


def _shipped(files: set[str], lib: str) -> dict[str, set[str]]:
    """Top-level directory under lib (or lib/cpXY) -> files below it."""
    tops: dict[str, set[str]] = {}
    for f in files:
        if not f.startswith(lib + "/"):
            continue
        parts = f[len(lib) + 1:].split("/")
        if parts[0].startswith("cp") and len(parts) > 1:
            parts = parts[1:]
        if len(parts) > 1:
            tops.setdefault(parts[0], set()).add(f)
    return tops


@pytest.mark.parametrize("fmt", ["deb", "rpm"])
def test_each_package_ships_its_program_and_dependencies_only(packages: Packages,
                                                              fmt: str) -> None:
    lister = _deb_list if fmt == "deb" else _rpm_list
    agent = _shipped(lister(getattr(packages, f"agent_{fmt}")), "/usr/lib/mesh-agent/python")
    registrar = _shipped(lister(getattr(packages, f"registrar_{fmt}")),
                         "/usr/lib/mesh-registrar/python")
    assert {"agent", "meshcore", "cryptography", "yaml"} <= agent.keys()
    assert {"registrar", "meshcore", "cryptography", "yaml"} <= registrar.keys()
    assert "registrar" not in agent, sorted(agent.get("registrar", ()))[:5]
    assert "agent" not in registrar, sorted(registrar.get("agent", ()))[:5]
    assert [m for m in REGISTRAR_ONLY if m in agent] == []
    assert [m for m in AGENT_ONLY if m in registrar] == []
    assert "aiohttp" in registrar and "tenacity" in agent  # the names above are real
    assert "psutil" not in agent  # host addresses come from /proc (agent/identity/host.py)


def test_deb_bundles_python_3_11_to_3_13(packages: Packages) -> None:
    files = _deb_list(packages.agent_deb)
    for abi in ("cp311", "cp312", "cp313"):
        assert any(f.startswith(f"/usr/lib/mesh-agent/python/{abi}/cryptography/")
                   for f in files), abi


def test_lintian_clean(packages: Packages) -> None:
    proc = subprocess.run(["lintian", "--fail-on", "error,warning",
                           str(packages.agent_deb), str(packages.registrar_deb)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _rpm_list(rpm: Path) -> set[str]:
    return set(subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True,
                              check=True).stdout.split())


def test_rpm_lists_the_expected_files(packages: Packages) -> None:
    files = _rpm_list(packages.agent_rpm)
    for path in ("/usr/bin/mesh-agent", "/usr/lib/systemd/system/mesh-agent.service",
                 "/etc/mesh-agent/agent.yaml", "/etc/mesh-agent/agent.d",
                 "/usr/share/doc/mesh-agent/cloud-init.md"):
        assert path in files, path
    bundled = [f for f in files if f.startswith("/usr/lib/mesh-agent/python/cp311/")]
    assert any("/cryptography/" in f for f in bundled)
    assert any("/systemd/journal.py" in f for f in bundled), "rpm bundles systemd-python"
    assert not any("/cp312/" in f for f in files), "rpm targets python3.11 only"
    requires = subprocess.run(["rpm", "-qp", "--requires", str(packages.agent_rpm)],
                              capture_output=True, text=True, check=True).stdout
    assert "python3.11" in requires
    launcher = subprocess.run(
        f"rpm2cpio {packages.agent_rpm} | cpio -i --to-stdout ./usr/bin/mesh-agent",
        shell=True, capture_output=True, text=True, check=True).stdout
    assert launcher.startswith("#!/usr/bin/python3.11 -I")
    assert "/usr/lib/mesh-registrar/python/registrar/cli.py" in _rpm_list(packages.registrar_rpm)


def test_rpmlint_clean(packages: Packages) -> None:
    proc = subprocess.run(["rpmlint", "-r", str(REPO / "packaging" / "rpmlintrc"),
                           str(packages.agent_rpm), str(packages.registrar_rpm)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 errors, 0 warnings" in proc.stdout
