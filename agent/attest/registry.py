"""The explicit list of attestors and how one is chosen.

An explicit ``attestation.method`` wins before any probing. ``auto`` asks DMI
first (no network), then probes the cloud attestors in parallel under one
deadline and falls back to the join token, so a VM with neither gets a clear
error instead of a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.attest import detect
from agent.attest.base import Attestor
from agent.attest.config import AttestationConfig
from agent.attest.token import TokenAttestor

log = logging.getLogger(__name__)

Factory = Callable[[AttestationConfig], Attestor]


# Each cloud attestor is imported when it is built, so an agent on a join token
# never loads the metadata clients (httpx) it does not use.
def _gce(config: AttestationConfig) -> Attestor:
    from agent.attest.gce import GceAttestor

    return GceAttestor.from_config(config)


def _aws(config: AttestationConfig) -> Attestor:
    from agent.attest.aws import AwsAttestor

    return AwsAttestor.from_config(config)


def _azure(config: AttestationConfig) -> Attestor:
    from agent.attest.azure import AzureAttestor

    return AzureAttestor.from_config(config)


# Cloud attestors, in preference order when more than one answers.
CLOUD_FACTORIES: Mapping[str, Factory] = {"gce": _gce, "aws": _aws, "azure": _azure}


def build(config: AttestationConfig, name: str) -> Attestor:
    if name == "token":
        return TokenAttestor(config.token_file)
    return CLOUD_FACTORIES[name](config)


async def choose(config: AttestationConfig, *, sysfs_root: Path = Path("/")) -> Attestor:
    """The attestor to use: the configured one, or for ``auto`` the detected one."""
    if config.method != "auto":
        log.info("attestor chosen by config", extra={"attestor": config.method})
        return build(config, config.method)
    dmi = detect.classify_dmi(detect.read_dmi(sysfs_root))
    if dmi is not None:
        log.info("platform detected", extra={"attestor": dmi, "by": "dmi"})
        return build(config, dmi)
    clouds = [build(config, name) for name in CLOUD_FACTORIES]
    found = await detect.probe(clouds, config.probe_timeout)
    if found:
        log.info("platform detected", extra={"attestor": found[0], "by": "metadata probe",
                                             "answered": ",".join(found)})
        return next(a for a in clouds if a.name == found[0])
    log.info("no cloud platform detected; using the join token",
             extra={"attestor": "token", "deadline": config.probe_timeout})
    return build(config, "token")


async def metadata_status(config: AttestationConfig) -> list[detect.ProbeResult]:
    """For ``mesh-agent check``: whether each cloud metadata service answers."""
    clouds = [build(config, name) for name in CLOUD_FACTORIES]
    return await detect.metadata_status(clouds, config.probe_timeout)
