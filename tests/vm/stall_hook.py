"""Baked into the lifecycle test's image only (never packaged, never in the
user data): lets the watchdog test stall a running agent. A ``.pth`` file in the guest's
``/usr/lib/python3/dist-packages`` (on sys.path for every Debian python3, 3.11
on Debian 12 and 3.13 on Debian 13) imports it at interpreter start;
the packaged launcher runs ``python3 -I``, which still reads site-packages
``.pth`` files but ignores PYTHONPATH. It acts only where the unit's drop-in
sets ``MESH_VMTEST_STALL_ON_USR1=1`` (the agent, not cloud-init's Python).

SIGUSR1 then blocks the main thread for good: the event loop stops, so do the
``WATCHDOG=1`` pings, and systemd must kill and restart the agent."""

from __future__ import annotations

import os
import signal
import time

ENV = "MESH_VMTEST_STALL_ON_USR1"
MODULE = "mesh_vmtest_stall"
SITE_DIR = "/usr/lib/python3/dist-packages"


def _stall(signum: int, frame: object) -> None:
    time.sleep(10**9)


if os.environ.get(ENV) == "1":
    signal.signal(signal.SIGUSR1, _stall)
