"""Which cloud this VM runs on: DMI strings first, then parallel metadata probes.

DMI (``/sys/class/dmi/id``) costs no network and no time, and it is what the
hypervisor says, so it decides when it names a cloud. Only when it does not
(containers, nested VMs, unknown hypervisors) do the metadata probes run, all
at once, under one deadline, so ``auto`` on a machine with no cloud falls back
to the join token within ``probe_timeout`` instead of hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.attest.base import Attestor

DMI_DIR = Path("sys/class/dmi/id")
DMI_FIELDS = ("sys_vendor", "product_name", "bios_vendor", "bios_version",
              "chassis_asset_tag", "product_uuid")
# Azure stamps this asset tag on every VM; plain Hyper-V has the same vendor/product.
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


def read_dmi(sysfs_root: Path) -> dict[str, str]:
    """The DMI fields present under ``sysfs_root`` (missing or unreadable ones skipped)."""
    out = {}
    for name in DMI_FIELDS:
        try:
            out[name] = (sysfs_root / DMI_DIR / name).read_text(errors="replace").strip()
        except OSError:
            continue
    return out


def classify_dmi(dmi: Mapping[str, str]) -> str | None:
    """``gce``, ``aws``, ``azure`` or None, from DMI strings alone (pure)."""
    vendor = dmi.get("sys_vendor", "")
    product = dmi.get("product_name", "")
    if vendor == "Google" or product == "Google Compute Engine":
        return "gce"
    bios = f"{dmi.get('bios_vendor', '')} {dmi.get('bios_version', '')}".lower()
    # Nitro instances say "Amazon EC2"; older Xen ones say "amazon" in the BIOS version
    # and have a product UUID starting with "ec2".
    if vendor == "Amazon EC2" or "amazon" in bios or \
            dmi.get("product_uuid", "").lower().startswith("ec2"):
        return "aws"
    if dmi.get("chassis_asset_tag") == AZURE_ASSET_TAG:
        return "azure"
    return None


async def probe(attestors: Sequence[Attestor], deadline: float) -> list[str]:
    """Names of the attestors whose ``detect()`` said yes within ``deadline`` seconds,
    in the order given. Probes still running at the deadline are cancelled."""
    tasks = {asyncio.ensure_future(_safe_detect(a)): a.name for a in attestors}
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    found = {tasks[t] for t in done if t.result()}
    return [a.name for a in attestors if a.name in found]


async def _safe_detect(attestor: Attestor) -> bool:
    try:
        return await attestor.detect()
    except Exception:  # a probe must never break start-up; it just did not answer
        return False


@dataclass(frozen=True)
class ProbeResult:
    """One metadata service's answer, for ``mesh-agent check``."""

    name: str
    answered: bool
    seconds: float


async def metadata_status(attestors: Sequence[Attestor], deadline: float) -> list[ProbeResult]:
    """Whether each cloud's metadata service answers, probed in parallel."""
    # Times real network I/O under a real deadline: the event loop's clock, not
    # the injected one (meshcore.clock).
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def one(attestor: Attestor) -> ProbeResult:
        try:
            ok = await asyncio.wait_for(_safe_detect(attestor), deadline)
        except TimeoutError:
            ok = False
        return ProbeResult(attestor.name, ok, round(loop.time() - started, 3))

    return list(await asyncio.gather(*(one(a) for a in attestors)))
