"""Registrar-side cloud evidence verification throughput, one core, one process.

    .venv/bin/python scripts/bench/cloud_verify.py [--n 2000]

Evidence is pre-made with the test PKI (RSA-2048 keys, like Google's and AWS's)
outside the timed loop; each GCE token is unique (the verifier refuses replays),
EC2 runs with ``reattest: always`` so first-use bookkeeping is not the figure.
The JWKS comes from a loopback fake, fetched once and cached, as in production.
Prints verifications/s and mean microseconds per verification per type.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from meshcore.clock import SystemClock  # noqa: E402
from registrar.attestation.aws import AwsConfig, AwsVerifier  # noqa: E402
from registrar.attestation.azure import AzureConfig, AzureVerifier  # noqa: E402
from registrar.attestation.gce import GceConfig, GceVerifier  # noqa: E402
from registrar.attestation.groups import GroupRule, GroupRules  # noqa: E402
from registrar.attestation.jwks import JwksCache  # noqa: E402
from tests.fakes.cloud_pki import CloudPki  # noqa: E402
from tests.fakes.gce_metadata import FakeGce  # noqa: E402
from tests.fakes.serve import serving  # noqa: E402

RULES = GroupRules((GroupRule("g", "gce", {"project_id": "mesh-test"}),
                    GroupRule("g", "aws", {"account_id": "123456789012"}),
                    GroupRule("g", "azure")))


async def timed(verify, items) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for evidence, challenge in items:
        await verify(evidence, challenge)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    n = parser.parse_args().n
    pki = CloudPki.create(Path(tempfile.mkdtemp(prefix="cloud-bench-")))
    nonces = [f"{i:032d}" for i in range(n)]
    with serving(FakeGce(pki).app()) as url:
        clock = SystemClock()
        gce = GceVerifier(GceConfig(groups=RULES), clock=clock,
                          keys=JwksCache(url + "/oauth2/v3/certs", clock=clock))
        gce_items = [({"token": pki.gce_token(c)}, c) for c in nonces]
        aws = AwsVerifier(AwsConfig(cert_dir=pki.root / "aws", reattest="always", groups=RULES),
                          clock=clock)
        doc = pki.aws_document()
        aws_ev = {"document": base64.b64encode(doc).decode(), "pkcs7": pki.aws_pkcs7(doc)}
        aws_items = [(aws_ev, None)] * n
        azure = AzureVerifier(AzureConfig(roots=(pki.azure_root,),
                                          intermediates=(pki.azure_intermediate,), groups=RULES),
                              clock=clock)
        azure_items = [({"document": pki.azure_signature(pki.azure_content(c))}, c)
                       for c in nonces[: max(1, n // 4)]]
        print(f"cloud_verify: n={n} (azure n={len(azure_items)}), one process, one core")
        for name, verifier, items in (("gce", gce, gce_items), ("aws", aws, aws_items),
                                      ("azure", azure, azure_items)):
            asyncio.run(verifier.verify(*items[0]) if name != "gce" else
                        verifier.verify({"token": pki.gce_token("w" * 32)}, "w" * 32))
            seconds = asyncio.run(timed(verifier.verify, items))
            print(f"  {name:<6} {len(items) / seconds:8.0f} verifications/s  "
                  f"{seconds / len(items) * 1e6:7.0f} us each")


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
