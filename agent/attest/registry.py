"""The explicit list of attestors and how one is chosen.

An explicit ``attestation.method`` wins before any probing. ``auto`` probes the
cloud attestors in parallel under one deadline and falls back to the join
token, so a VM with neither gets a clear error instead of a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from agent.attest.base import Attestor
from agent.attest.token import TokenAttestor
from agent.config.model import AttestationConfig

log = logging.getLogger(__name__)

Factory = Callable[[AttestationConfig], Attestor]

# Cloud attestors, in preference order when more than one answers.
CLOUD_FACTORIES: Mapping[str, Factory] = {}


def build(config: AttestationConfig, name: str) -> Attestor:
    if name == "token":
        return TokenAttestor(config.token_file)
    return CLOUD_FACTORIES[name](config)


async def choose(config: AttestationConfig) -> Attestor:
    """The attestor to use: the configured one, or for ``auto`` the detected one."""
    if config.method != "auto":
        return build(config, config.method)
    clouds = [build(config, name) for name in CLOUD_FACTORIES]

    async def probe(attestor: Attestor) -> bool:
        try:
            return await asyncio.wait_for(attestor.detect(), config.probe_timeout)
        except (TimeoutError, OSError):
            return False

    results = await asyncio.gather(*(probe(a) for a in clouds))
    for attestor, found in zip(clouds, results, strict=True):
        if found:
            log.info("platform detected", extra={"attestor": attestor.name})
            return attestor
    return build(config, "token")
