"""The ``capture:`` section of the agent config."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section


@dataclass(frozen=True)
class CaptureConfig:
    enabled: bool


def parse_capture(s: Section) -> CaptureConfig:
    return CaptureConfig(enabled=s.flag("enabled", False))
