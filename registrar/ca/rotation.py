"""``mesh-registrar ca rotate``: the file side of each phase (versions.py holds the
state machine).

Order of writes in every step: the new version's directory (keys first, 0600,
durable), then the files humans and tools read (``root-cert.pem`` = the bundle,
the top-level signing files, the server certificate), and last
``ca/rotation.json``. Running registrars act on ``rotation.json`` alone
(registrar/ca/live.py), so a crash part-way leaves the old rotation in force
and the step can be run again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshcore.durable import write_atomic
from registrar.ca.authority import load_pem_certs, load_signing_key, pem
from registrar.ca.bootstrap import (
    INTERMEDIATE_TTL,
    ROOT_TTL,
    ca_certificate,
    key_pem,
    new_key,
)
from registrar.ca.live import bundle_certs
from registrar.ca.plugin import ImportRefused, load_plugin_ca
from registrar.ca.servercert import reissue_server_certificate
from registrar.ca.versions import (
    Rotation,
    RotationRefused,
    Version,
    load,
    save,
    version_dir,
)
from registrar.config import RegistrarConfig

# Workloads whose live certificate chains to the given CA versions ("" = issued
# before versions were recorded, i.e. by the initial CA).
LiveHolders = Callable[[frozenset[str]], list[str]]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _version_of(directory: Path, name: str, kind: str, now: float) -> Version:
    roots = load_pem_certs(directory / "root-cert.pem")
    cert = load_pem_certs(directory / "ca-cert.pem")[0]
    return Version(name=name, root=fingerprint(roots[0]), intermediate=fingerprint(cert),
                   kind=kind, created_at=now)  # type: ignore[arg-type]


def _write_version(directory: Path, *, ca_key: bytes, ca_cert: list[x509.Certificate],
                   chain: list[x509.Certificate], roots: list[x509.Certificate],
                   root_key: bytes | None) -> None:
    directory.parent.mkdir(exist_ok=True, mode=0o700)
    directory.mkdir(exist_ok=True, mode=0o700)
    if root_key is not None:
        write_atomic(directory / "root-key.pem", root_key, mode=0o600)
    write_atomic(directory / "ca-key.pem", ca_key, mode=0o600)
    write_atomic(directory / "root-cert.pem", pem(roots).encode(), mode=0o644)
    write_atomic(directory / "cert-chain.pem", pem(chain).encode(), mode=0o644)
    write_atomic(directory / "ca-cert.pem", pem(ca_cert).encode(), mode=0o644)


def current(config: RegistrarConfig, now: float) -> Rotation:
    """The stored rotation; for a registrar that never rotated, version 1 made from
    its top-level files (copied into ``ca/v1`` the first time a step writes)."""
    stored = load(config.state_dir)
    if stored is not None:
        return stored
    v1 = version_dir(config.state_dir, "v1")
    if not (v1 / "ca-cert.pem").exists():
        root_key = config.state_dir / "root-key.pem"
        _write_version(v1, ca_key=config.ca.key.read_bytes(),
                       ca_cert=load_pem_certs(config.ca.cert)[:1],
                       chain=load_pem_certs(config.ca.chain), roots=load_pem_certs(config.ca.roots),
                       root_key=root_key.read_bytes() if root_key.exists() else None)
    return Rotation(phase="idle", active="v1", bundle_version=1,
                    versions=(_version_of(v1, "v1", "initial", now),), updated_at=now)


def _publish(config: RegistrarConfig, rotation: Rotation, *, reissue_server: bool) -> None:
    """Write what humans and tools read, then ``rotation.json``, the switch."""
    state = config.state_dir
    write_atomic(config.ca.roots, pem(bundle_certs(state, rotation)).encode(), mode=0o644)
    active = version_dir(state, rotation.active)
    write_atomic(config.ca.key, (active / "ca-key.pem").read_bytes(), mode=0o600)
    write_atomic(config.ca.chain, (active / "cert-chain.pem").read_bytes(), mode=0o644)
    write_atomic(config.ca.cert, (active / "ca-cert.pem").read_bytes(), mode=0o644)
    if reissue_server:
        reissue_server_certificate(config, active)
    save(state, rotation)


def prepare(config: RegistrarConfig, now: float, *, import_dir: Path | None = None,
            allow_nonstrict: bool = False) -> tuple[Rotation, tuple[str, ...]]:
    """A new root + intermediate (or an imported plug-in CA) beside the active one,
    its root added to the bundle; the active CA keeps signing."""
    rotation = current(config, now)
    rotation.require("idle", "prepare")
    name = rotation.next_name()
    directory = version_dir(config.state_dir, name)
    if directory.exists():
        shutil.rmtree(directory)  # left by a prepare that crashed before rotation.json
    warnings: tuple[str, ...] = ()
    if import_dir is not None:
        try:
            plugin = load_plugin_ca(import_dir, allow_nonstrict=allow_nonstrict)
        except ImportRefused as exc:
            raise RotationRefused("import_refused", str(exc)) from None
        warnings = plugin.warnings
        _write_version(directory, ca_key=key_pem(plugin.key), ca_cert=[plugin.cert],
                       chain=plugin.chain, roots=plugin.roots, root_key=None)
        kind = "imported"
    else:
        td = config.trust_domain
        root_key = new_key()
        root = ca_certificate(f"{td} mesh root {name}", key=root_key, issuer=None,
                              issuer_key=root_key, ttl=ROOT_TTL, path_length=1, trust_domain=td)
        ca_key = new_key()
        ca_cert = ca_certificate(f"{td} registrar intermediate {name}", key=ca_key, issuer=root,
                                 issuer_key=root_key, ttl=INTERMEDIATE_TTL, path_length=0,
                                 trust_domain=td)
        _write_version(directory, ca_key=key_pem(ca_key), ca_cert=[ca_cert],
                       chain=[ca_cert, root], roots=[root], root_key=key_pem(root_key))
        kind = "generated"
    new = _version_of(directory, name, kind, now)
    if new.root in rotation.bundle_roots():
        raise RotationRefused("same_root", "the new CA's root is already in the bundle; "
                              "for a new intermediate under it use `ca rotate "
                              "--intermediate-only`")
    rotated = rotation.prepared(new, now)
    _publish(config, rotated, reissue_server=False)
    return rotated, warnings


def activate(config: RegistrarConfig, now: float) -> Rotation:
    """The prepared CA signs from now on; the server certificate is reissued by it."""
    rotation = current(config, now).activated(now)
    _publish(config, rotation, reissue_server=True)
    return rotation


def retire(config: RegistrarConfig, now: float, holders: LiveHolders) -> Rotation:
    """Drop the previous root from the bundle, unless a live certificate chains to it."""
    rotation = current(config, now)
    retired = rotation.retired(now)  # refuses a wrong phase first
    assert rotation.previous is not None
    old_root = rotation.version(rotation.previous).root
    if old_root != rotation.version(rotation.active).root:
        old = frozenset(v.name for v in rotation.versions if v.root == old_root)
        still = holders(old | ({""} if "v1" in old else frozenset()))
        if still:
            raise RotationRefused(
                "live_certificates", f"{len(still)} workload(s) still hold a live certificate "
                f"from the old CA ({', '.join(sorted(old))}); wait until they renew (or "
                "revoke them) and retire again", tuple(still))
    _publish(config, retired, reissue_server=False)
    return retired


def rotate_intermediate(config: RegistrarConfig, now: float) -> Rotation:
    """A new intermediate signed by the active root's key; it signs at once and the
    server certificate follows. The bundle (the roots) does not change."""
    rotation = current(config, now)
    rotation.require("idle", "rotate --intermediate-only")
    active_dir = version_dir(config.state_dir, rotation.active)
    root_key_file = active_dir / "root-key.pem"
    if not root_key_file.exists():
        raise RotationRefused("root_key_missing", f"{root_key_file} is missing: a new "
                              "intermediate needs the root's key (imported CAs and roots "
                              "kept offline do not leave it here). Put it there, 0600, or "
                              "rotate the root with `ca rotate prepare --import-ca DIR`")
    root = load_pem_certs(active_dir / "root-cert.pem")[0]
    root_key = load_signing_key(root_key_file)
    name = rotation.next_name()
    ca_key = new_key()
    ca_cert = ca_certificate(f"{config.trust_domain} registrar intermediate {name}",
                             key=ca_key, issuer=root, issuer_key=root_key,
                             ttl=INTERMEDIATE_TTL, path_length=0,
                             trust_domain=config.trust_domain)
    directory = version_dir(config.state_dir, name)
    _write_version(directory, ca_key=key_pem(ca_key), ca_cert=[ca_cert], chain=[ca_cert, root],
                   roots=load_pem_certs(active_dir / "root-cert.pem"),
                   root_key=root_key_file.read_bytes())
    rotated = rotation.intermediate_rotated(
        _version_of(directory, name, "intermediate", now), now)
    _publish(config, rotated, reissue_server=True)
    return rotated
