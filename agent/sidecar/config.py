"""The ``sidecar:`` section of the agent config."""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.reader import Section


@dataclass(frozen=True)
class SidecarConfig:
    enabled: bool


def parse_sidecar(s: Section) -> SidecarConfig:
    return SidecarConfig(enabled=s.flag("enabled", False))
