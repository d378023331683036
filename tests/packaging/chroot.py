"""A throwaway clean Debian chroot (12 or 13): an overlay over the VM tests'
cached mmdebstrap rootfs, so every test starts from the same untouched system."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.vm.image import DEBIAN12, Release, cache_dir, rootfs


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["chroot", str(self.root), *argv], capture_output=True, text=True,
                              timeout=300, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def copy_in(self, src: Path) -> str:
        dest = self.root / "tmp" / src.name
        shutil.copyfile(src, dest)
        return f"/tmp/{src.name}"

    def path(self, guest: str) -> Path:
        return self.root / guest.lstrip("/")


@contextmanager
def clean_chroot(release: Release = DEBIAN12) -> Iterator[Chroot]:
    base = rootfs(release)
    work = Path(tempfile.mkdtemp(prefix="chroot-", dir=cache_dir()))
    upper, scratch, merged = work / "upper", work / "scratch", work / "merged"
    for d in (upper, scratch, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={upper},workdir={scratch}", str(merged)],
                   check=True)
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True)
        yield Chroot(merged)
    finally:
        for mnt in (merged / "proc", merged):
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)
