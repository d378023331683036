"""Boots the test VM under qemu: direct kernel boot, virtio disk, restricted
user networking, serial console to a file, results over a virtio-9p share.

Measured on our CI-like hosts: /dev/kvm exists but the host is a
PVM guest without vmx/svm, and KVM hangs a stock Debian kernel there, so KVM
is used only when the CPU flags show hardware virtualisation; otherwise TCG.
About one TCG boot in 25 hits a kernel soft lockup: the serial log is
watched, the VM killed and the boot retried once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm.image import BakedImage

LOCKUP = re.compile(r"soft lockup|Kernel panic|rcu: INFO: rcu_\w+ self-detected stall")
# A deadline for a hung boot, not a performance bound. A lifecycle boot costs
# qemu 210-270 s of host CPU under TCG (Boot.cpu_seconds: kernel and systemd,
# cloud-init's four Python stages, each agent start with Envoy, the CLI
# calls), plus idle waits (a renewal, the watchdog); a host shared with other
# heavy jobs stretches the wall time several-fold (MESH_VM_BOOT_TIMEOUT).
BOOT_TIMEOUT = float(os.environ.get("MESH_VM_BOOT_TIMEOUT", "600"))


def hardware_virt() -> bool:
    """True only where KVM can really run a stock kernel (vmx/svm, not PVM)."""
    if not Path("/dev/kvm").exists() or Path("/sys/module/kvm_pvm").exists():
        return False
    flags = Path("/proc/cpuinfo").read_text()
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE) is not None


@dataclass(frozen=True)
class Forward:
    """A guest address:port that qemu connects to a host loopback port."""

    guest_addr: str
    guest_port: int
    host_port: int

    def netdev(self) -> str:
        # cmd: runs one socat per guest connection (a tcp: chardev would carry
        # a single connection only). restrict=on blocks everything else.
        return (f"guestfwd=tcp:{self.guest_addr}:{self.guest_port}"
                f"-cmd:socat STDIO TCP:127.0.0.1:{self.host_port}")


class BootError(AssertionError):
    """The VM did not power itself off in time (serial log tail attached)."""


@dataclass
class Boot:
    number: int
    seconds: float
    attempts: int
    serial: Path
    # CPU time qemu used (user + system, all vCPU threads): unlike wall time it
    # barely moves when other jobs load the host, so boots compare across runs.
    cpu_seconds: float = 0.0


@dataclass
class VM:
    """One disk (a qcow2 overlay over the baked image), booted one or more times.

    Every VM starts from a fresh overlay, so its first boot is a genuine first
    boot; booting it again is a reboot of the same disk.
    """

    image: BakedImage
    workdir: Path
    seed: Path
    forwards: tuple[Forward, ...] = ()
    # Every guestfwd address must lie inside qemu's user network: a VM that
    # must reach 169.254.169.254 (cloud metadata) uses 169.254.169.0/24.
    network: str = "10.0.2.0/24"
    memory_mb: int = 1024
    cpus: int = 2
    boots: list[Boot] = field(default_factory=list)

    @property
    def share(self) -> Path:
        return self.workdir / "share"

    @property
    def disk(self) -> Path:
        return self.workdir / "disk.qcow2"

    def prepare(self, payload: str) -> None:
        """Fresh overlay and share; ``payload`` is the guest script run on each boot."""
        if self.share.exists():
            shutil.rmtree(self.share)
        (self.share / "out").mkdir(parents=True)
        (self.share / "payload.sh").write_text(payload)
        self.disk.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                        "-b", str(self.image.disk), str(self.disk)], check=True)

    def command(self, serial: Path) -> list[str]:
        kvm = hardware_virt()
        netdev = ",".join(["user", "id=n0", "restrict=on", f"net={self.network}",
                           *(f.netdev() for f in self.forwards)])
        return [
            "qemu-system-x86_64",
            "-machine", f"q35,accel={'kvm' if kvm else 'tcg'}",
            "-cpu", "host" if kvm else "qemu64",
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{serial}",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 mesh.vmtest=1 "
                       "systemd.show_status=false",
            "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe",
            "-drive", f"file={self.seed},if=virtio,format=raw,readonly=on",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-rng-pci",
            "-virtfs", f"local,path={self.share},mount_tag=vmtest,security_model=none,id=vmtest",
        ]

    def boot(self, timeout: float = BOOT_TIMEOUT) -> Boot:
        """Boot until the payload powers the VM off; one retry after a soft lockup."""
        number = len(self.boots) + 1
        started = time.monotonic()
        cpu = 0.0
        for attempt in (1, 2):
            serial = self.workdir / f"serial-boot{number}-try{attempt}.log"
            outcome, used = self._run_once(serial, timeout)
            cpu += used
            if outcome == "ok":
                boot = Boot(number, time.monotonic() - started, attempt, serial, cpu)
                self.boots.append(boot)
                return boot
            if outcome != "lockup" or attempt == 2:
                raise BootError(f"boot {number} {outcome} (try {attempt}); serial tail:\n"
                                + _tail(serial))
            (self.share / f"boot-{number}.log").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _run_once(self, serial: Path, timeout: float) -> tuple[str, float]:
        """(outcome, CPU seconds qemu used)."""
        serial.unlink(missing_ok=True)
        proc = subprocess.Popen(self.command(serial), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        status: int | None = None
        cpu = 0.0
        try:
            while status is None:
                # wait4, not poll(): it reports the child's own resource usage.
                pid, wait_status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status = os.waitstatus_to_exitcode(wait_status)
                    proc.returncode = status
                    cpu = usage.ru_utime + usage.ru_stime
                    break
                if time.monotonic() > deadline:
                    return f"timed out after {timeout:.0f}s", cpu
                if serial.exists() and LOCKUP.search(serial.read_text(errors="replace")):
                    return "lockup", cpu
                time.sleep(1)
            if status != 0:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                return f"qemu exited {status}: {out}", cpu
            return "ok", cpu
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def result(self, number: int) -> tuple[int, str]:
        """(exit code, output) of the payload on boot ``number``."""
        rc_file = self.share / f"boot-{number}.rc"
        log = (self.share / f"boot-{number}.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        if not rc_file.exists():
            serial = self.boots[number - 1].serial if len(self.boots) >= number else None
            raise BootError(f"boot {number}: payload left no exit code; output:\n{text}\n"
                            f"serial tail:\n{_tail(serial) if serial else '(no boot)'}")
        return int(rc_file.read_text().strip()), text


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no serial log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def make_seed(workdir: Path, user_data: str, instance_id: str) -> Path:
    """A NoCloud seed image (label cidata) made with cloud-localds."""
    (workdir / "user-data").write_text(user_data)
    (workdir / "meta-data").write_text(
        f"instance-id: {instance_id}\nlocal-hostname: vmtest\n")
    seed = workdir / "seed.img"
    subprocess.run(["cloud-localds", str(seed), str(workdir / "user-data"),
                    str(workdir / "meta-data")], check=True, capture_output=True)
    return seed
