"""The ``attestation:`` section of the agent config: which evidence, and where
each cloud's metadata service answers (configurable so a fake can stand in)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshcore.config.reader import Section

ATTEST_METHODS = ("auto", "token", "gce", "aws", "azure")


@dataclass(frozen=True)
class AttestationConfig:
    method: str
    token_file: Path
    gce_metadata_url: str
    aws_metadata_url: str
    azure_metadata_url: str
    probe_timeout: float



def parse_attestation(s: Section) -> AttestationConfig:
    gce = s.section("gce")
    aws = s.section("aws")
    azure = s.section("azure")
    config = AttestationConfig(
        method=s.text("method", "auto", choices=ATTEST_METHODS),
        token_file=s.path("token_file", "/etc/mesh-agent/bootstrap-token"),
        gce_metadata_url=gce.url(
            "metadata_url", "http://metadata.google.internal/computeMetadata/v1",
            schemes=("http", "https")),
        aws_metadata_url=aws.url("metadata_url", "http://169.254.169.254",
                                 schemes=("http", "https")),
        azure_metadata_url=azure.url("metadata_url", "http://169.254.169.254/metadata",
                                     schemes=("http", "https")),
        probe_timeout=s.duration("probe_timeout", 2.0, minimum=0.1, maximum=60),
    )
    for sub in (gce, aws, azure):
        sub.finish()
    return config
