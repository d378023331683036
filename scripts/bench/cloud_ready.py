"""Agent start -> READY with each attestor against the fake metadata servers.

    sudo .venv/bin/python scripts/bench/cloud_ready.py [--runs 3]

Each run: a fresh VM network namespace with one fake metadata server at
169.254.169.254 (default URLs), a real registrar on the host, a real
``mesh-agent run`` inside the namespace with ``method: auto`` (DMI absent, so
the parallel probes decide) and no state. Also the join token for comparison.
Prints the median and worst seconds from process start to ``/ready`` = 200.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.cloud.netns import VmAgent, make_vm  # noqa: E402
from tests.cloud.test_e2e import evidence_options  # noqa: E402
from tests.fakes.cloud_pki import CloudPki  # noqa: E402
from tests.fakes.gce_metadata import FakeGce  # noqa: E402
from tests.fakes.serve import serving  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402


def one(kind: str, pki: CloudPki, base: Path, google: str) -> float:
    vm = make_vm()
    reg = None
    agent = None
    try:
        evidence = {"join_token": {}}
        if kind != "token":
            vm.serve_metadata(kind, pki.root)
            evidence[kind] = evidence_options(kind, pki, google + "/oauth2/v3/certs")
        base.mkdir(parents=True)
        reg = RegistrarProcess(base / "registrar", host=vm.host_ip,
                               groups={"web": ("prod", "web-vm", 3600)},
                               config={"evidence": evidence})
        reg.base_dir.mkdir(parents=True)
        reg.start()
        agent = VmAgent.inside(vm, base / "agent", reg)
        if kind == "token":
            agent.write_token(reg.create_token("web", ttl="10m"))
        started = time.monotonic()
        agent.start()
        agent.wait_ready(timeout=60)
        elapsed = time.monotonic() - started
        assert agent.status()["attestor"] == kind
        return elapsed
    finally:
        if agent is not None:
            agent.kill()
        if reg is not None:
            reg.kill()
        vm.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    root = Path(tempfile.mkdtemp(prefix="cloud-ready-"))
    pki = CloudPki.create(root / "pki")
    print(f"cloud_ready: agent process start -> /ready 200, {runs} runs each (median, max)")
    with serving(FakeGce(pki).app()) as google:
        for kind in ("token", "gce", "aws", "azure"):
            times = [one(kind, pki, root / f"{kind}-{i}", google) for i in range(runs)]
            print(f"  {kind:<6} median {statistics.median(times):5.2f} s   "
                  f"max {max(times):5.2f} s")


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
