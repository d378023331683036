"""Group rules: which workload group verified cloud evidence belongs to.

A rule names an evidence type and a pattern per claim (shell-style globs,
``fnmatch.fnmatchcase``: case-sensitive, ``*`` and ``?`` only); the first rule
whose patterns all match wins. A claim a rule names but the evidence lacks
never matches, so a typo in a rule denies instead of admitting everyone.
Evidence that verifies but matches no rule is refused (``no_matching_group``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from registrar.rejections import Rejected

# The claims each verifier proves; rules may only name these.
CLAIMS: Mapping[str, tuple[str, ...]] = {
    "gce": ("project_id", "project_number", "zone", "instance_id", "instance_name",
            "service_account"),
    "aws": ("account_id", "region", "availability_zone", "instance_id", "image_id",
            "instance_type", "architecture"),
    "azure": ("subscription_id", "vm_id", "sku", "offer", "publisher"),
}


@dataclass(frozen=True)
class GroupRule:
    group: str
    evidence_type: str
    match: Mapping[str, str] = field(default_factory=dict)

    def matches(self, evidence_type: str, claims: Mapping[str, str]) -> bool:
        if evidence_type != self.evidence_type:
            return False
        return all(key in claims and fnmatchcase(claims[key], pattern)
                   for key, pattern in self.match.items())


@dataclass(frozen=True)
class GroupRules:
    rules: tuple[GroupRule, ...] = ()

    def resolve(self, evidence_type: str, claims: Mapping[str, str]) -> str:
        for rule in self.rules:
            if rule.matches(evidence_type, claims):
                return rule.group
        # Name the evidence type and subject-free claim keys only: claims are
        # not secret, but the message goes back to an unauthenticated caller.
        raise Rejected("no_matching_group",
                       f"verified {evidence_type} evidence matches no group rule")


def parse_rules(raw: Sequence[Mapping[str, Any]], where: str = "groups") -> GroupRules:
    """Build rules from config data: ``[{group, type, match: {claim: glob}}]``.

    Raises ValueError naming the entry, the key and what is allowed.
    """
    rules = []
    for index, entry in enumerate(raw):
        at = f"{where}[{index}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at}: must be a mapping with keys group, type, match")
        unknown = set(entry) - {"group", "type", "match"}
        if unknown:
            raise ValueError(f"{at}: unknown keys {sorted(unknown)}; allowed: group, type, match")
        group, kind, match = entry.get("group"), entry.get("type"), entry.get("match", {})
        if not isinstance(group, str) or not group:
            raise ValueError(f"{at}.group: must be a non-empty string")
        if not isinstance(kind, str) or kind not in CLAIMS:
            raise ValueError(f"{at}.type: {kind!r} not one of {sorted(CLAIMS)}")
        if not isinstance(match, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in match.items()):
            raise ValueError(f"{at}.match: must map claim names to glob strings")
        bad = set(match) - set(CLAIMS[kind])
        if bad:
            raise ValueError(f"{at}.match: unknown claims {sorted(bad)}; "
                             f"allowed for {kind}: {', '.join(CLAIMS[kind])}")
        rules.append(GroupRule(group=group, evidence_type=kind, match=dict(match)))
    return GroupRules(tuple(rules))
