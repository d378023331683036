"""The SDS mirror: the proxy user gets its own 0600 copy of the key, generations
swap by one rename, old ones are pruned, and the key never shows up in a repr."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from agent.proxy.user import ProxyIdentity
from agent.sidecar.sds import Generation, SdsMirror
from agent.sidecar.settings import EnvoyPaths
from tests.sidecar.pki import MeshCA

PROXY = ProxyIdentity(1337, 1338)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_publish_mirrors_generation_owned_by_proxy(tmp_path: Path, mesh_ca: MeshCA,
                                                    root: None) -> None:
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, PROXY)
    mirror.prepare()
    generation = mesh_ca.generation(mesh_ca.issue(mesh_ca.spiffe("a", "b")))
    target = mirror.publish(generation)

    assert os.readlink(paths.current) == target.name
    assert mirror.live() == generation.name
    key = paths.key.resolve()
    assert (key.stat().st_uid, key.stat().st_gid, _mode(key)) == (1337, 1338, 0o600)
    assert paths.key.read_bytes() == generation.key_pem
    assert paths.cert_chain.read_bytes() == generation.chain_pem
    assert paths.bundle.read_bytes() == generation.bundle_pem
    for directory in (paths.root, paths.sds_dir, target):
        assert _mode(directory) == 0o750 and directory.stat().st_gid == 1338
    for doc in (paths.cert_secret_file, paths.bundle_secret_file):
        assert _mode(doc) == 0o640
        assert yaml.safe_load(doc.read_text())["resources"][0]["name"] in ("default", "ROOTCA")


def test_generations_swap_and_old_ones_are_pruned(tmp_path: Path, mesh_ca: MeshCA) -> None:
    chowns: list[tuple[str, int, int]] = []
    paths = EnvoyPaths(tmp_path / "envoy")
    mirror = SdsMirror(paths, PROXY,
                       chown=lambda p, u, g: chowns.append((p.name, u, g)))
    mirror.prepare()
    published = [mirror.publish(mesh_ca.generation(mesh_ca.issue(mesh_ca.spiffe("a", "b"))))
                 for _ in range(4)]
    assert os.readlink(paths.current) == published[-1].name
    remaining = sorted(p.name for p in paths.sds_dir.glob("gen-*"))
    assert remaining == sorted(p.name for p in published[-2:])  # live + previous
    assert ("key.pem", 1337, 1338) in chowns
    assert not list(paths.sds_dir.glob(".*.tmp"))


def test_generation_reads_the_credential_store_layout_and_never_prints_the_key(
        tmp_path: Path, mesh_ca: MeshCA) -> None:
    leaf = mesh_ca.issue(mesh_ca.spiffe("a", "b"))
    gen_dir = tmp_path / "credentials" / "g00000001"
    gen_dir.mkdir(parents=True)
    (gen_dir / "key.pem").write_bytes(leaf.key_pem)
    (gen_dir / "cert-chain.pem").write_bytes(leaf.cert_pem)
    (gen_dir / "bundle.pem").write_bytes(mesh_ca.bundle_pem)
    os.symlink("g00000001", tmp_path / "credentials" / "current")

    generation = Generation.read(tmp_path / "credentials" / "current")
    assert generation.name == "g00000001"
    assert generation.key_pem == leaf.key_pem
    assert "PRIVATE" not in repr(generation) and "PRIVATE" not in str(generation)
