"""A full state filesystem during a renewal (a real 1 MiB tmpfs, filled up):
the old generation keeps being served, the renewal is retried with backoff,
status shows the cause, and freeing space lets the next retry store it."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

# The agent in its own mount namespace with a tiny tmpfs as its state directory;
# the test reaches that tmpfs through /proc/PID/root.
_TMPFS = 'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"'


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_enospc_during_renewal_is_retried_and_shown(registrar_factory: Any,
                                                    agent_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "agent" / "state"
    state.mkdir(parents=True)
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 6)})  # 16 s lifetime
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"),
                          prefix=["unshare", "-m", "--propagation", "private",
                                  "sh", "-c", _TMPFS, str(state)])
    agent.start()
    agent.wait_ready()
    assert agent.proc is not None
    inside = Path(f"/proc/{agent.proc.pid}/root") / str(state).lstrip("/")
    first = agent.status()
    filler = _fill(inside)
    deadline = time.monotonic() + 20
    while "storage_error" not in agent.status()["failures"]:
        assert time.monotonic() < deadline, agent.log_text()[-3000:]
        time.sleep(0.1)
    during = agent.status()
    assert during["serial"] == first["serial"] and during["ready"] is True
    assert "No space left on device" in during["last_error"]
    assert "renewed certificate not stored; still serving the current one" in agent.log_text()
    # The live generation is intact on disk.
    live = inside / "credentials" / os.readlink(inside / "credentials" / "current")
    assert (live / "key.pem").stat().st_size > 0
    filler.unlink()
    while agent.status()["serial"] == first["serial"]:
        assert time.monotonic() < deadline + 10, agent.log_text()[-3000:]
        time.sleep(0.1)
    assert agent.status()["ready"] is True
    assert "Traceback" not in agent.log_text()
    assert agent.stop() == 0
