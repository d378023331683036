"""What a capture backend does, and choosing one (once) for this machine.

Detection follows istio-iptables' lesson: the backend that already holds
rules wins, otherwise the one the system's ``iptables`` points at; native
nftables only when asked for or when there is no iptables at all. The
choice is recorded by the caller and never re-detected on restart.
"""

from __future__ import annotations

from typing import Protocol

from agent.capture.iptables import VARIANTS, IptablesBackend
from agent.capture.nftables import NftablesBackend
from agent.capture.plan import RuleSet
from agent.capture.runner import CaptureError, Runner

Snapshot = dict[str, tuple[str, ...]]


class Backend(Protocol):
    name: str

    def render(self, ruleset: RuleSet) -> dict[str, str]:
        """Human-readable transaction text per family/table (changes nothing)."""

    def expected(self, ruleset: RuleSet) -> Snapshot:
        """What ``installed`` returns once ``ruleset`` is applied."""

    async def absent_tables(self, families: tuple[int, ...]) -> tuple[str, ...]:
        """Tables that do not exist yet and that removal may delete again."""

    async def installed(self, families: tuple[int, ...] = (4, 6)) -> Snapshot:
        """What of ours is live now, in the same form as the backend's ``expected``."""

    async def apply(self, ruleset: RuleSet) -> None:
        """Atomically replace whatever of ours is live with ``ruleset``."""

    async def remove(self, created_tables: tuple[str, ...] = ()) -> None:
        """Remove everything of ours; delete ``created_tables`` if still unused."""


def make_backend(name: str, runner: Runner) -> Backend:
    if name in VARIANTS:
        return IptablesBackend(name, runner)
    if name == "nftables":
        return NftablesBackend(runner)
    raise CaptureError(f"unknown capture backend {name!r} (allowed: nftables, "
                       f"{', '.join(VARIANTS)})")


def _rule_count(save: str) -> int:
    return sum(1 for line in save.splitlines() if line.startswith("-A "))


async def detect(runner: Runner) -> str:
    """Pick the backend for a machine that has no recorded choice yet."""
    counts: dict[str, int] = {}
    for variant in VARIANTS:
        total = 0
        for tool in (f"iptables{variant[8:]}-save", f"ip6tables{variant[8:]}-save"):
            result = await runner.run([tool])
            if result.returncode != 0:
                total = -1
                break
            total += _rule_count(result.stdout)
        counts[variant] = total
    usable = {v: n for v, n in counts.items() if n >= 0}
    if not usable:
        result = await runner.run(["nft", "--version"])
        if result.returncode == 0:
            return "nftables"
        raise CaptureError("no capture backend: neither iptables nor nft works here")
    with_rules = [v for v, n in usable.items() if n > 0]
    if len(with_rules) == 1:
        return with_rules[0]
    version = await runner.run(["iptables", "--version"])
    default = "iptables-legacy" if "legacy" in version.stdout else "iptables-nft"
    if default in usable:
        return default
    return next(iter(usable))
