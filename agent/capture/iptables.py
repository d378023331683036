"""The iptables backend: one ``*-restore --noflush`` transaction per family.

Everything we own is found by name (chains ``MESH_*`` and the built-in-chain
rules that jump to them), so apply and remove work from what is really
installed, not from what we believe: leftovers of a crashed run or of an
older config are replaced in the same atomic transaction that installs the
new rules. Nothing else in any table is read-modified-written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar, cast

from agent.capture.plan import PREFIX, TO_PORT, FamilyRules, Jump, Rule, RuleSet
from agent.capture.runner import CaptureError, Runner

T = TypeVar("T")


async def _all(*steps: Awaitable[T]) -> list[T]:
    """Every step to its end, then the first failure raised: a rollback after a
    failed family must never race the other family's command still running."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


VARIANTS = ("iptables-nft", "iptables-legacy")
Snapshot = dict[str, tuple[str, ...]]  # "ipv4 MESH_OUTPUT" -> rule lines, in order


def render_rule(rule: Rule) -> str:
    """The rule exactly as ``iptables-save`` prints it, so read-back compares text."""
    parts = ["-A", rule.chain]
    if rule.src:
        parts += ["-s", rule.src]
    if rule.dst:
        parts += (["!"] if rule.dst_negated else []) + ["-d", rule.dst]
    if rule.in_iface:
        parts += ["-i", rule.in_iface]
    if rule.out_iface:
        parts += ["-o", rule.out_iface]
    proto = "udp" if rule.udp else "tcp" if rule.tcp else None
    if proto:
        parts += ["-p", proto]
    if rule.dport is not None:
        parts += ["-m", proto or "tcp", "--dport", str(rule.dport)]
    for flag, owner in (("--uid-owner", rule.uid), ("--gid-owner", rule.gid)):
        if owner is not None:
            parts += ["-m", "owner"] + (["!"] if rule.owner_negated else []) + [flag, str(owner)]
    parts += ["-j", rule.target]
    if rule.target == TO_PORT:
        parts += ["--to-ports", str(rule.to_port)]
    return " ".join(parts)


def render_jump(jump: Jump) -> str:
    if jump.hook == "PREROUTING":
        # Only traffic addressed to this host: forwarded traffic (a Docker bridge's
        # egress) must never be captured as inbound.
        return f"-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -j {jump.chain}"
    return f"-A {jump.hook} -p {jump.proto} -j {jump.chain}"


def expected(fam: FamilyRules) -> Snapshot:
    """What ``installed`` must return once ``fam`` is applied."""
    key = f"ipv{fam.family}"
    snap: Snapshot = {f"{key} {chain}": tuple(render_rule(r) for r in fam.rules
                                            if r.chain == chain) for chain in fam.chains}
    for hook in sorted({j.hook for j in fam.jumps}):
        snap[f"{key} {hook}"] = tuple(render_jump(j) for j in fam.jumps if j.hook == hook)
    return snap


@dataclass(frozen=True)
class NatState:
    """Our part of one family's nat table, parsed from ``*-save`` output."""

    present: bool  # is there a nat table at all
    chains: tuple[str, ...]  # MESH_* chains, in save order
    rules: tuple[str, ...]  # every "-A" line that belongs to us
    foreign_rules: int  # rules in the nat table that are not ours
    foreign_chains: int  # user chains that are not ours
    builtin_policies: tuple[str, ...]


def parse_nat(save: str) -> NatState:
    table, chains, rules, policies = None, [], [], []
    foreign, foreign_chains, present = 0, 0, False
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            present = present or table == "nat"
        elif table != "nat" or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name.startswith(PREFIX):
                chains.append(name)
            elif policy == "-":
                foreign_chains += 1
            else:
                policies.append(policy)
        elif line.startswith("-A "):
            words = line.split()
            target = words[words.index("-j") + 1] if "-j" in words else ""
            if words[1].startswith(PREFIX) or target.startswith(PREFIX):
                rules.append(line)
            else:
                foreign += 1
    return NatState(present, tuple(chains), tuple(rules), foreign, foreign_chains,
                    tuple(policies))


def snapshot(family: int, state: NatState) -> Snapshot:
    key = f"ipv{family}"
    snap: Snapshot = {}
    for line in state.rules:
        snap.setdefault(f"{key} {line.split()[1]}", ())
        snap[f"{key} {line.split()[1]}"] += (line,)
    for chain in state.chains:
        snap.setdefault(f"{key} {chain}", ())
    return snap


def _teardown(state: NatState, keep: tuple[str, ...] = ()) -> list[str]:
    lines = ["-D" + line[2:] for line in state.rules if not line.split()[1].startswith(PREFIX)]
    stale = [c for c in state.chains if c not in keep]
    lines += [f"-F {c}" for c in stale] + [f"-X {c}" for c in stale]
    return lines


def render_apply(fam: FamilyRules, live: NatState) -> str:
    """One transaction that replaces whatever of ours is live with ``fam``."""
    lines = ["*nat"] + [f":{c} - [0:0]" for c in fam.chains]  # declaring flushes
    lines += _teardown(live, keep=fam.chains)
    lines += [render_rule(r) for r in fam.rules] + [render_jump(j) for j in fam.jumps]
    return "\n".join([*lines, "COMMIT", ""])


def render_remove(live: NatState) -> str | None:
    body = _teardown(live)
    return "\n".join(["*nat", *body, "COMMIT", ""]) if body else None


class IptablesBackend:
    """``iptables-nft`` or ``iptables-legacy``; the variant is fixed at construction."""

    def __init__(self, variant: str, runner: Runner) -> None:
        if variant not in VARIANTS:
            raise ValueError(variant)
        self.name = variant
        self._suffix = variant.removeprefix("iptables")  # "-nft" / "-legacy"
        self._runner = runner

    def _tool(self, family: int, what: str) -> str:
        return f"{'ip6tables' if family == 6 else 'iptables'}{self._suffix}-{what}"

    def render(self, ruleset: RuleSet) -> dict[str, str]:
        empty = NatState(True, (), (), 0, 0, ())
        return {f"ipv{f.family} ({self._tool(f.family, 'restore')} --noflush)":
                render_apply(f, empty) for f in ruleset.families}

    def expected(self, ruleset: RuleSet) -> Snapshot:
        snap: Snapshot = {}
        for fam in ruleset.families:
            snap.update(expected(fam))
        return snap

    async def _state(self, family: int) -> NatState:
        result = await self._runner.run([self._tool(family, "save")])
        return parse_nat(result.check().stdout)

    async def _restore(self, family: int, text: str) -> None:
        result = await self._runner.run(
            [self._tool(family, "restore"), "--noflush", "--wait", "10"], stdin=text)
        result.check()

    # The two families are separate tables and tools (iptables-*, ip6tables-*):
    # they are read and written side by side, halving capture's share of start-up.
    async def absent_tables(self, families: tuple[int, ...]) -> tuple[str, ...]:
        """nat tables that do not exist yet (baseline facts to record before applying)."""
        states = await _all(*(self._state(family) for family in families))
        return tuple(f"ipv{family} nat" for family, state in zip(families, states, strict=True)
                     if not state.present)

    async def installed(self, families: tuple[int, ...] = (4, 6)) -> Snapshot:
        snap: Snapshot = {}
        states = await _all(*(self._state(family) for family in families))
        for family, state in zip(families, states, strict=True):
            snap.update(snapshot(family, state))
        return snap

    async def _apply_family(self, fam: FamilyRules) -> None:
        await self._restore(fam.family, render_apply(fam, await self._state(fam.family)))

    async def apply(self, ruleset: RuleSet) -> None:
        await _all(*(self._apply_family(fam) for fam in ruleset.families))
        # A family the plan no longer has (ipv6 turned off) must not keep old rules.
        planned = {f.family for f in ruleset.families}
        for family in (4, 6):
            if family not in planned:
                await self._remove_family(family)

    async def _remove_family(self, family: int) -> None:
        text = render_remove(await self._state(family))
        if text:
            await self._restore(family, text)

    async def remove(self, created_tables: tuple[str, ...] = ()) -> None:
        errors = []
        for family in (4, 6):
            try:
                await self._remove_family(family)
                if f"ipv{family} nat" in created_tables:
                    await self._drop_table_if_empty(family)
            except CaptureError as exc:
                errors.append(str(exc))  # still try the other family
        if errors:
            raise CaptureError("; ".join(errors))

    async def _drop_table_if_empty(self, family: int) -> None:
        """Delete a nat table we caused to exist, if nobody else has used it since.

        Only nf_tables can drop a table; a legacy kernel table stays (empty).
        """
        state = await self._state(family)
        if self._suffix != "-nft" or not state.present or state.foreign_rules or \
                state.foreign_chains or any(p != "ACCEPT" for p in state.builtin_policies):
            return
        result = await self._runner.run(["nft", "delete", "table", "ip6" if family == 6 else "ip",
                                         "nat"])
        result.check()

