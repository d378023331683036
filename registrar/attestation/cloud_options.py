"""Build the GCE, EC2 and Azure verifiers from ``evidence.<type>`` in registrar.yaml.

    evidence:
      gce:
        jwks_url: https://www.googleapis.com/oauth2/v3/certs   # default
        allowed_projects: [prod-1]
        max_instance_age: 0          # seconds/duration; 0 = no limit
        groups: [{group: web, match: {project_id: prod-1, service_account: "web@*"}}]
      aws:
        cert_dir: /etc/mesh-registrar/aws    # <partition>/<region>.pem, overrides shipped
        allowed_accounts: ["123456789012"]
        allowed_regions: []
        max_instance_age: 10m
        reattest: evict                      # or: always
        groups: [{group: billing, match: {account_id: "123456789012"}}]
      azure:
        root_file: /etc/mesh-registrar/azure-root.pem
        intermediates_file: /etc/mesh-registrar/azure-intermediates.pem
        signer_names: [metadata.azure.com]
        allowed_subscriptions: [...]
        groups: [{group: batch, match: {subscription_id: "..."}}]

Every error names the file, the dotted key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshcore.clock import Clock
from meshcore.config.reader import Section
from meshcore.config.source import Source
from registrar.attestation.aws import AwsConfig, AwsVerifier
from registrar.attestation.aws_ledger import InventoryLedger
from registrar.attestation.azure import SIGNER_NAMES, AzureConfig, AzureVerifier, load_pem_certs
from registrar.attestation.gce import GceConfig, GceVerifier
from registrar.attestation.groups import GroupRules, parse_rules
from registrar.attestation.jwks import GOOGLE_JWKS_URL, JwksCache
from registrar.config import RegistrarConfig
from registrar.store.connection import Connection, open_store
from registrar.store.replays import SeenEvidence

DAY = 86400.0


def _section(kind: str, options: Mapping[str, Any], config: RegistrarConfig) -> Section:
    source = Source(data=dict(options), origins={}, default_file=config.source_file)
    return Section(source, f"evidence.{kind}", dict(options))


def _groups(s: Section, kind: str, config: RegistrarConfig) -> GroupRules:
    raw = s.raw("groups")
    if not isinstance(raw, list) or not raw:
        raise s.error("groups", "must be a non-empty list of {group, match} rules",
                      "[{group: NAME, match: {CLAIM: GLOB}}]")
    try:
        rules = parse_rules([{"type": kind, **entry} if isinstance(entry, Mapping) else entry
                             for entry in raw], s.key("groups"))
    except ValueError as exc:
        raise s.error("groups", str(exc)) from None
    for rule in rules.rules:
        if rule.group not in config.groups:
            raise s.error("groups", f"rule names group {rule.group!r}, which is not defined",
                          ", ".join(sorted(config.groups)) or "a name under groups:")
    return rules


def _age(s: Section) -> float | None:
    age = s.duration("max_instance_age", 0.0, minimum=0.0, maximum=3650 * DAY)
    return age or None


def gce_verifier(options: Mapping[str, Any], config: RegistrarConfig,
                 clock: Clock, conn: Connection | None = None) -> GceVerifier:
    """``conn``: the server's store; given, accepted tokens are remembered there
    (shared by every worker and replica), else in this process only."""
    s = _section("gce", options, config)
    jwks_url = s.url("jwks_url", GOOGLE_JWKS_URL, schemes=("https", "http"))
    verifier_config = GceConfig(
        jwks_url=jwks_url,
        leeway=s.duration("leeway", 60.0, minimum=0.0, maximum=60.0),
        max_instance_age=_age(s),
        allowed_projects=s.str_list("allowed_projects"),
        groups=_groups(s, "gce", config))
    refresh = s.duration("jwks_min_refresh", 30.0, minimum=1.0, maximum=3600.0)
    s.finish()
    return GceVerifier(verifier_config, clock=clock,
                       keys=JwksCache(jwks_url, min_refresh_interval=refresh, clock=clock),
                       replay=None if conn is None else SeenEvidence(conn))


def aws_verifier(options: Mapping[str, Any], config: RegistrarConfig,
                 clock: Clock, conn: Connection | None = None) -> AwsVerifier:
    s = _section("aws", options, config)
    cert_dir = s.path("cert_dir") if s.has("cert_dir") else None
    if cert_dir is not None and not cert_dir.is_dir():
        raise s.error("cert_dir", f"{cert_dir} is not a directory",
                      "a directory of <partition>/<region>.pem (aws, aws-cn, aws-us-gov)")
    reattest = s.text("reattest", "evict", choices=("evict", "always"))
    verifier_config = AwsConfig(
        cert_dir=cert_dir,
        allowed_accounts=s.str_list("allowed_accounts"),
        allowed_regions=s.str_list("allowed_regions"),
        max_instance_age=_age(s),
        reattest="always" if reattest == "always" else "evict",
        groups=_groups(s, "aws", config))
    s.finish()
    try:
        return AwsVerifier(verifier_config, clock=clock,
                           ledger=InventoryLedger(lambda: open_store(config), clock=clock,
                                                  conn=conn))
    except ValueError as exc:
        raise s.error("cert_dir", str(exc)) from None


def _pem_file(s: Section, key: str, required: bool) -> tuple[Any, ...]:
    if not required and not s.has(key):
        return ()
    path: Path = s.path(key)
    try:
        certs = load_pem_certs(path)
    except (OSError, ValueError) as exc:
        raise s.error(key, f"cannot read certificates: {exc}", "a PEM file") from None
    if required and not certs:
        raise s.error(key, f"{path} holds no certificate", "a PEM file")
    return certs


def azure_verifier(options: Mapping[str, Any], config: RegistrarConfig,
                   clock: Clock) -> AzureVerifier:
    s = _section("azure", options, config)
    verifier_config = AzureConfig(
        roots=_pem_file(s, "root_file", required=True),
        intermediates=_pem_file(s, "intermediates_file", required=False),
        signer_names=s.str_list("signer_names", SIGNER_NAMES),
        allowed_subscriptions=s.str_list("allowed_subscriptions"),
        groups=_groups(s, "azure", config))
    s.finish()
    return AzureVerifier(verifier_config, clock=clock)
