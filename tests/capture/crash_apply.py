"""Runs one ``CaptureController.apply`` so a test can ``kill -9`` it mid-way.

``crash_apply.py NS BACKEND STATE_DIR pause``: after the first ruleset
transaction commits, print ``MIDWAY`` and hang (the test then kills us with
half the families applied and the record saying ``applying``).
``... run``: just apply; the test kills at a random moment.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.runner import Result, SubprocessRunner
from agent.proxy.config import ProxyConfig


class PausingRunner(SubprocessRunner):
    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  timeout: float = 30.0) -> Result:
        result = await super().run(argv, stdin=stdin, timeout=timeout)
        if argv[0].endswith("-restore") or argv[:2] == ["nft", "-f"]:
            print("MIDWAY", flush=True)
            await asyncio.Event().wait()
        return result


def main(ns: str, backend: str, state_dir: str, mode: str) -> None:
    prefix = ["ip", "netns", "exec", ns]
    runner = PausingRunner(prefix) if mode == "pause" else SubprocessRunner(prefix)
    config = CaptureConfig(enabled=True, backend=backend, proxy=ProxyConfig(uid=1337, gid=1337),
                           probe=False, inbound_ports=(8080, 9090))
    controller = CaptureController(config, state_dir=Path(state_dir), runner=runner)
    asyncio.run(controller.apply())
    print("APPLIED", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
