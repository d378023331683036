"""Builds the test VM's disk: a cached Debian root filesystem (mmdebstrap;
Debian 12 "bookworm" with Python 3.11, Debian 13 "trixie" with Python 3.13),
with a freshly built .deb baked in, written out as an ext4 image.

The rootfs is cached under ``cache_dir()`` per release, keyed by a hash of the
recipe (suite, package list and hooks), so a change to any builds a new one and
nothing stale is ever reused; the harness's own guest files (guest/) are
copied in at bake time, so editing them costs seconds, not a rebuild. Building
one takes about 80 s on an idle 2-core host (10-13 min when other jobs load
it: the kernel's initramfs dominates); baking a .deb into it (overlay +
``dpkg -i`` in a chroot + ``mkfs.ext4 -d``) a few seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Release:
    name: str     # cache and test ids: debian12, debian13
    suite: str    # mmdebstrap suite
    python: str   # its /usr/bin/python3, which the .deb's launcher must accept


DEBIAN12 = Release("debian12", "bookworm", "3.11")
DEBIAN13 = Release("debian13", "trixie", "3.13")
RELEASES = (DEBIAN12, DEBIAN13)
# What the guest needs to boot under qemu, run cloud-init and satisfy the
# mesh-agent .deb's Depends offline (the chroot bake never downloads).
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "cloud-init", "python3",
    "python3-cffi-backend", "python3-systemd", "iproute2", "iptables", "nftables",
    "linux-image-amd64", "initramfs-tools", "kmod", "procps", "passwd",
)
# Runs inside mmdebstrap after the install ("$1" is the rootfs). Kernel
# modules for netfilter, virtio, 9p and ext4 stay; hardware drivers go.
CUSTOMIZE = r"""
set -e
root="$1"
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
for d in sound drivers/gpu drivers/net/wireless drivers/net/ethernet drivers/media \
         drivers/infiniband drivers/staging drivers/bluetooth drivers/iio drivers/usb \
         drivers/hid drivers/input drivers/scsi drivers/mmc drivers/platform net/wireless \
         net/bluetooth net/mac80211 fs/btrfs fs/xfs fs/ocfs2 fs/nfs fs/nfsd fs/ceph fs/smb; do
  rm -rf "$root"/lib/modules/*/kernel/$d
done
for k in "$root"/lib/modules/*; do chroot "$root" depmod -a "$(basename "$k")"; done
echo vmtest > "$root/etc/hostname"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"
sed -i '/^ - ssh$/d' "$root/etc/cloud/cloud.cfg"
chroot "$root" systemctl enable systemd-networkd
"""
GUEST_DIR = Path(__file__).parent / "guest"
DISK_SIZE = "2G"


def cache_dir() -> Path:
    """Outside the repo, shared by runs: MESH_AGENT_TEST_CACHE or /var/cache/mesh-agent-tests."""
    return Path(os.environ.get("MESH_AGENT_TEST_CACHE", "/var/cache/mesh-agent-tests"))


def recipe_key(release: Release = DEBIAN12) -> str:
    blob = json.dumps({"suite": release.suite, "mirror": MIRROR, "packages": PACKAGES,
                       "customize": CUSTOMIZE}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _guest_key() -> str:
    guest = {str(p.relative_to(GUEST_DIR)): p.read_text()
             for p in sorted(GUEST_DIR.rglob("*")) if p.is_file()}
    return hashlib.sha256(json.dumps(guest, sort_keys=True).encode()).hexdigest()[:16]


def _prune(pattern: str, keep: Path, newest: int) -> None:
    """Drop stale cache entries (each is hundreds of MB): all but ``keep`` and
    the ``newest`` most recently used others."""
    others = sorted((p for p in cache_dir().glob(pattern) if p != keep and p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in others[newest:]:
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Several pytest runs (other engineers, CI) may build the same cache entry.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs(release: Release = DEBIAN12) -> Path:
    """The cached, extracted rootfs of ``release`` for the current recipe (built if missing)."""
    target = cache_dir() / f"rootfs-{release.name}-{recipe_key(release)}"
    with _locked(cache_dir() / "rootfs.lock"):
        if target.is_dir():
            return target
        building = Path(tempfile.mkdtemp(prefix="rootfs-build-", dir=cache_dir()))
        try:
            building.rmdir()
            subprocess.run(
                ["mmdebstrap", "--variant=minbase", "--mode=root",
                 "--include=" + ",".join(PACKAGES),
                 "--dpkgopt=path-exclude=/usr/share/locale/*",
                 "--aptopt=Acquire::Languages \"none\"",
                 f"--customize-hook={_hook_file()} \"$1\"",
                 release.suite, str(building), MIRROR],
                check=True, capture_output=True, text=True, timeout=900)
            building.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        _prune(f"rootfs-{release.name}-" + "?" * 16, target, newest=1)
    return target


def _hook_file() -> str:
    hook = cache_dir() / f"customize-{hashlib.sha256(CUSTOMIZE.encode()).hexdigest()[:12]}.sh"
    if not hook.exists():
        hook.write_text("#!/bin/sh\n" + CUSTOMIZE)
        hook.chmod(0o755)
    return str(hook)


def _install_guest_files(root: Path) -> None:
    """The harness's own guest side (not part of the product): see guest/."""
    for src in sorted(GUEST_DIR.rglob("*")):
        if not src.is_file():
            continue
        rel = src.relative_to(GUEST_DIR)
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        dest.chmod(0o755 if rel.parts[0] == "usr" else 0o644)
    wants = root / "etc/systemd/system/cloud-init.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in sorted((GUEST_DIR / "etc/systemd/system").glob("mesh-vmtest*.service")):
        link = wants / unit.name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{unit.name}")


@dataclass(frozen=True)
class BakedImage:
    disk: Path       # raw ext4 root filesystem, read-only base for per-test overlays
    kernel: Path
    initrd: Path


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _content_hash(content: bytes | Path) -> str:
    if isinstance(content, Path):  # a big binary (Envoy): hash name and stat, not bytes
        st = content.stat()
        return f"{content}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(content).hexdigest()


def bake(debs: tuple[Path, ...], files: Mapping[str, bytes | Path] | None = None,
         release: Release = DEBIAN12) -> BakedImage:
    """``release``'s rootfs with ``debs`` installed (``dpkg -i`` in a chroot) as an ext4 image.

    ``files`` (guest path -> content, or a host file to copy) are written
    before install, e.g. a config baked into an image. Cached by rootfs key +
    package hashes + files.
    """
    base = rootfs(release)
    key = hashlib.sha256(json.dumps(
        [recipe_key(release), _guest_key(), [_file_hash(d) for d in debs],
         sorted((k, _content_hash(v)) for k, v in (files or {}).items())],
    ).encode()).hexdigest()[:16]
    out = cache_dir() / f"baked-{key}"
    with _locked(cache_dir() / f"baked-{key}.lock"):
        if (out / "disk.raw").exists():
            out.touch()
            return _baked(out)
        work = Path(tempfile.mkdtemp(prefix="bake-", dir=cache_dir()))
        try:
            _bake_into(base, work, debs, files or {})
            (work / "result").rename(out)
        finally:
            _umount_all(work)
            shutil.rmtree(work, ignore_errors=True)
        _prune("baked-" + "?" * 16, out, newest=3)
    return _baked(out)


def _baked(out: Path) -> BakedImage:
    return BakedImage(disk=out / "disk.raw", kernel=out / "vmlinuz", initrd=out / "initrd.img")


def _bake_into(base: Path, work: Path, debs: tuple[Path, ...],
               files: Mapping[str, bytes | Path]) -> None:
    upper, scratch, merged, result = (work / n for n in ("upper", "scratch", "merged", "result"))
    for d in (upper, scratch, merged, result):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={scratch}", str(merged)],
                   check=True, capture_output=True)
    _install_guest_files(merged)
    for guest_path, content in files.items():
        dest = merged / guest_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, dest)  # keeps the exec bit
        else:
            dest.write_bytes(content)
    if debs:
        incoming = merged / "tmp" / "debs"
        incoming.mkdir(parents=True)
        for deb in debs:
            shutil.copyfile(deb, incoming / deb.name)
        subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
        try:
            proc = subprocess.run(
                ["chroot", str(merged), "dpkg", "-i", *(f"/tmp/debs/{d.name}" for d in debs)],
                capture_output=True, text=True, timeout=300, check=False)
        finally:
            subprocess.run(["umount", str(merged / "proc")], check=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg -i in the chroot failed:\n{proc.stdout}\n{proc.stderr}")
        shutil.rmtree(incoming)
    kernel = sorted((merged / "boot").glob("vmlinuz-*"))[-1]
    initrd = sorted((merged / "boot").glob("initrd.img-*"))[-1]
    shutil.copyfile(kernel, result / "vmlinuz")
    shutil.copyfile(initrd, result / "initrd.img")
    subprocess.run(["truncate", "-s", DISK_SIZE, str(result / "disk.raw")], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(merged),
                    str(result / "disk.raw")], check=True, capture_output=True, timeout=300)


def _umount_all(work: Path) -> None:
    for mnt in (work / "merged" / "proc", work / "merged"):
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
