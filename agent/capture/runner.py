"""The subprocess seam: every iptables/nft command goes through a ``Runner``.

Tests inject a runner that prefixes ``ip netns exec NAME``; the agent uses the
plain one. Nothing here goes through a shell.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class CaptureError(Exception):
    """Capture could not be planned, applied, verified or removed (context in the text)."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise CaptureError(f"{' '.join(self.argv)} exited {self.returncode}: "
                               f"{self.stderr.strip() or self.stdout.strip()}")
        return self


class Runner(Protocol):
    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  timeout: float = 30.0) -> Result: ...


class SubprocessRunner:
    """Runs commands directly, optionally under ``prefix`` (e.g. ``ip netns exec NS``)."""

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = tuple(prefix)

    async def run(self, argv: Sequence[str], *, stdin: str | None = None,
                  timeout: float = 30.0) -> Result:
        full = (*self.prefix, *argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"})
        except FileNotFoundError as exc:
            return Result(tuple(argv), 127, "", f"{argv[0]}: not found ({exc.strerror})")
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CaptureError(f"{' '.join(argv)} timed out after {timeout:g}s") from None
        return Result(tuple(argv), proc.returncode or 0, out.decode(errors="replace"),
                      err.decode(errors="replace"))
