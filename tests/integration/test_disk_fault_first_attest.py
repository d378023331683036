"""A full (ENOSPC) or failing (EIO) state filesystem during the FIRST
attestation, when there is no previous generation to fall back on: the
issued certificate is kept in memory and only its storing is retried with
backoff (the join token is already spent, so attesting again would be
refused), status shows the cause, no half-written generation is left on
disk, and once the disk works the same certificate is stored and served.

Both faults are real: ENOSPC is a 1 MiB tmpfs filled before the agent starts;
EIO is an ext4 filesystem on a loop device whose backing file is cut short
under it, so the block layer fails writes past the end ("attempt to access
beyond end of device"), and grown back to heal it. Each runs in the agent's
own mount namespace, reached through /proc/PID/root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshcore.durable import TEMP_NAME

# $0 = the state directory; the agent's command follows.
_FULL_TMPFS = ('mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && '
               '{ cat /dev/zero > "$0/filler" 2>/dev/null; test -s "$0/filler"; } && exec "$@"')
# $0 = the state directory, $1 = the ext4 image; mounted at full size, then cut
# to 4 MiB under the mounted filesystem (mount refuses a short device).
_FAILING_EXT4 = ('mount -o loop,errors=continue "$1" "$0" && truncate -s 4m "$1" && '
                 'losetup -c "$(losetup -n -O NAME -j "$1")" && shift && exec "$@"')
_IMAGE_SIZE = "64m"


def _full_disk(state: Path, tmp_path: Path) -> tuple[list[str], Callable[[Path], None], str]:
    def heal(inside: Path) -> None:
        (inside / "filler").unlink()
    return (["sh", "-c", _FULL_TMPFS, str(state)], heal, "No space left on device")


def _failing_disk(state: Path, tmp_path: Path) -> tuple[list[str], Callable[[Path], None], str]:
    image = tmp_path / "state.ext4"
    subprocess.run(["truncate", "-s", _IMAGE_SIZE, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", "256", str(image)],
                   check=True)

    def heal(inside: Path) -> None:
        subprocess.run(["truncate", "-s", _IMAGE_SIZE, str(image)], check=True)
        device = subprocess.run(["losetup", "-n", "-O", "NAME", "-j", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        subprocess.run(["losetup", "-c", device], check=True)
    return (["sh", "-c", _FAILING_EXT4, str(state), str(image)], heal, "Input/output error")


def _left_on_disk(credentials: Path) -> list[str]:
    """Anything a failed store could have left: generations, partials, temp
    files, a ``current`` link."""
    if not credentials.exists():
        return []
    temp = re.compile(TEMP_NAME)
    return sorted(name for name in os.listdir(credentials)
                  if name.startswith(("g", ".g")) or name == "current" or temp.fullmatch(name))


def _storage_errors(agent: Any) -> int:
    try:
        code, body = agent.get("/status")
    except OSError:  # not listening yet
        return 0
    return int(body["failures"].get("storage_error", 0)) if code == 200 else 0


@pytest.mark.parametrize("fault", [_full_disk, _failing_disk], ids=["ENOSPC", "EIO"])
def test_first_attestation_on_a_broken_disk_is_stored_once_it_heals(
        fault: Any, registrar_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "agent" / "state"
    state.mkdir(parents=True)
    prefix, heal, cause = fault(state, tmp_path)
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 60)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          prefix=["unshare", "-m", "--propagation", "private", *prefix])
    agent.start()
    assert agent.proc is not None
    inside = Path(f"/proc/{agent.proc.pid}/root") / str(state).lstrip("/")
    deadline = time.monotonic() + 30
    while _storage_errors(agent) < 3:  # retried, not given up
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.1)
    during = agent.status()
    assert during["ready"] is False
    assert cause in during["last_error"], during
    shown = subprocess.run([sys.executable, "-m", "agent", "status", "--config",
                            str(agent.config_path)], capture_output=True, text=True,
                           check=False, cwd=Path(__file__).resolve().parents[2])
    assert cause in shown.stdout, shown.stdout + shown.stderr
    assert _left_on_disk(inside / "credentials") == []
    assert agent.token_file.exists(), "the token file went before anything was stored"
    log = agent.log_text()
    assert "issued certificate not stored; retrying" in log
    assert log.count("certificate issued") == 0

    heal(inside)
    while not agent.ready():
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        assert time.monotonic() < deadline + 30, agent.log_text()[-3000:]
        time.sleep(0.1)
    creds = inside / "credentials"
    assert os.readlink(creds / "current") == "g00000001"
    assert _left_on_disk(creds) == ["current", "g00000001"]
    assert (creds / "g00000001" / "key.pem").stat().st_size > 0
    assert not agent.token_file.exists()  # spent only once stored
    after = agent.status()
    assert after["ready"] is True and after["last_error"] is None
    log = agent.log_text()
    assert "token_spent" not in log and "Traceback" not in log
    assert agent.stop() == 0
