"""The native nftables backend: one ``inet`` table of our own, one ``nft -f`` transaction.

The table is replaced whole (``add``; ``delete``; define) in a single
transaction, so apply is idempotent and atomic and removal can never touch
another table. IPv4 and IPv6 rules live in per-family chains of that table.
"""

from __future__ import annotations

from agent.capture.plan import PREFIX, RETURN, TO_PORT, FamilyRules, Rule, RuleSet
from agent.capture.runner import Runner

TABLE = "inet mesh_agent"
# Base chain, hook, priority: -100 is "dstnat", but nft only accepts that name on prerouting.
HOOKS = {"PREROUTING": ("MESH_PREROUTING", "prerouting", "dstnat"),
         "OUTPUT": ("MESH_NAT_OUTPUT", "output", "-100")}
Snapshot = dict[str, tuple[str, ...]]


def chain_name(chain: str, family: int) -> str:
    return f"{chain}_IPV{family}"


def _addr(cidr: str) -> str:
    # nft lists host addresses without their prefix length; match its text.
    return cidr.removesuffix("/32") if "." in cidr else cidr.removesuffix("/128")


def render_rule(rule: Rule, family: int) -> str:
    """The rule as ``nft list table`` prints it, so read-back compares text."""
    ip = "ip" if family == 4 else "ip6"
    parts = []
    if rule.src:
        parts.append(f"{ip} saddr {_addr(rule.src)}")
    if rule.dst:
        parts.append(f"{ip} daddr {'!= ' if rule.dst_negated else ''}{_addr(rule.dst)}")
    if rule.in_iface:
        parts.append(f'iifname "{rule.in_iface}"')
    if rule.out_iface:
        parts.append(f'oifname "{rule.out_iface}"')
    proto = "udp" if rule.udp else "tcp"
    if rule.dport is not None:
        parts.append(f"{proto} dport {rule.dport}")
    elif rule.tcp or rule.udp:
        parts.append(f"meta l4proto {proto}")
    neg = "!= " if rule.owner_negated else ""
    if rule.uid is not None:
        parts.append(f"meta skuid {neg}{rule.uid}")
    if rule.gid is not None:
        parts.append(f"meta skgid {neg}{rule.gid}")
    if rule.target == RETURN:
        parts.append("return")
    elif rule.target == TO_PORT:
        parts.append(f"redirect to :{rule.to_port}")
    else:
        parts.append(f"jump {chain_name(rule.target, family)}")
    return " ".join(parts)


def _hook_rules(families: tuple[FamilyRules, ...], hook: str) -> tuple[str, ...]:
    out = []
    for fam in families:
        proto = "ipv4" if fam.family == 4 else "ipv6"
        for jump in fam.jumps:
            if jump.hook == hook:
                # Only traffic addressed to this host counts as inbound (never forwarded).
                local = " fib daddr type local" if hook == "PREROUTING" else ""
                out.append(f"meta nfproto {proto} meta l4proto {jump.proto}{local} "
                           f"jump {chain_name(jump.chain, fam.family)}")
    return tuple(out)


def expected(ruleset: RuleSet) -> Snapshot:
    """Chain -> lines exactly as ``nft list table`` shows them (minus counters)."""
    snap: Snapshot = {}
    for hook, (name, nft_hook, priority) in HOOKS.items():
        head = f"type nat hook {nft_hook} priority {priority}; policy accept;"
        snap[name] = (head, *_hook_rules(ruleset.families, hook))
    for fam in ruleset.families:
        for chain in fam.chains:
            snap[chain_name(chain, fam.family)] = tuple(
                render_rule(r, fam.family) for r in fam.rules if r.chain == chain)
    return snap


def render_apply(ruleset: RuleSet) -> str:
    body = []
    for chain, lines in expected(ruleset).items():
        body += [f"\tchain {chain} {{"] + [f"\t\t{line}" for line in lines] + ["\t}"]
    # "add" then "delete" makes the delete valid whether or not the table exists.
    return "\n".join([f"table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{", *body,
                      "}", ""])


def render_remove() -> str:
    return f"table {TABLE}\ndelete table {TABLE}\n"


def parse_table(listing: str) -> Snapshot:
    snap: Snapshot = {}
    chain = None
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            chain = line.split()[1]
            snap[chain] = ()
        elif line == "}":
            chain = None
        elif chain and line:
            # Counters are state, not configuration; drop them before comparing.
            snap[chain] += (line.replace(" counter packets 0 bytes 0", ""),)
    return snap


class NftablesBackend:
    name = "nftables"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def render(self, ruleset: RuleSet) -> dict[str, str]:
        return {f"{TABLE} (nft -f)": render_apply(ruleset)}

    def expected(self, ruleset: RuleSet) -> Snapshot:
        return expected(ruleset)

    async def absent_tables(self, families: tuple[int, ...]) -> tuple[str, ...]:
        return ()  # our table is ours alone; removal always deletes it

    async def installed(self, families: tuple[int, ...] = (4, 6)) -> Snapshot:
        family, name = TABLE.split()
        result = await self._runner.run(["nft", "list", "table", family, name])
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return {}
            result.check()
        return {k: v for k, v in parse_table(result.stdout).items() if k.startswith(PREFIX)}

    async def apply(self, ruleset: RuleSet) -> None:
        (await self._runner.run(["nft", "-f", "-"], stdin=render_apply(ruleset))).check()

    async def remove(self, created_tables: tuple[str, ...] = ()) -> None:
        (await self._runner.run(["nft", "-f", "-"], stdin=render_remove())).check()
