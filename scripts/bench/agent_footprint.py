"""Agent benchmark: start -> READY against a registrar on loopback (first boot
with a token, and restart with stored credentials), RSS after 60 s, and CPU
used while idle over 60 s (every run's restarted agent, idle side by side;
bytecode compiled first, as the package does at install). Targets (issue 2):
READY <= 0.5 s, RSS <= 35 MiB, idle CPU <= 0.1 % of a core.

    .venv/bin/python scripts/bench/agent_footprint.py [--idle-seconds 60] [--runs 5]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.bench.installed import compile_bytecode  # noqa: E402
from tests.fixtures.agent import AgentProcess  # noqa: E402
from tests.fixtures.registrar import RegistrarProcess  # noqa: E402


def time_to_ready(agent: AgentProcess) -> float:
    started = time.monotonic()
    agent.start()
    while not agent.ready():
        if agent.proc is not None and agent.proc.poll() is not None:
            raise SystemExit(f"agent exited:\n{agent.log_text()}")
        time.sleep(0.002)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        reg = RegistrarProcess(base / "registrar", groups={"web": ("prod", "web-vm", 86400)})
        reg.init()
        reg.start()
        running: list[AgentProcess] = []
        try:
            first, restart = [], []
            for run in range(args.runs):
                agent = AgentProcess(base / f"agent-{run}", reg,
                                     token=reg.create_token("web", ttl="10m"),
                                     extra={"log_level": "info"})
                first.append(time_to_ready(agent))
                agent.stop()
                running.append(agent)
                restart.append(time_to_ready(agent))
            print(f"start->READY, first boot (attest, keygen, TLS): "
                  f"median {statistics.median(first) * 1000:.0f} ms, "
                  f"max {max(first) * 1000:.0f} ms over {args.runs} runs")
            print(f"start->READY, restart with stored credentials:  "
                  f"median {statistics.median(restart) * 1000:.0f} ms, "
                  f"max {max(restart) * 1000:.0f} ms")
            # Every run's restarted agent idles in the same window, certificates held.
            procs = [psutil.Process(a.proc.pid) for a in running if a.proc is not None]
            time.sleep(2)
            cpu0 = [p.cpu_times() for p in procs]
            t0 = time.monotonic()
            time.sleep(args.idle_seconds)
            cpu1 = [p.cpu_times() for p in procs]
            elapsed = time.monotonic() - t0
            used = [(b.user + b.system) - (a.user + a.system)
                    for a, b in zip(cpu0, cpu1, strict=True)]
            rss = [p.memory_info().rss / 2**20 for p in procs]
            print(f"steady-state RSS after {args.idle_seconds + 2:.0f} s: "
                  f"median {statistics.median(rss):.1f} MiB "
                  f"(each: {', '.join(f'{r:.2f}' for r in rss)})")
            idle = statistics.median(used)
            print(f"idle CPU over {elapsed:.0f} s: median {idle:.3f} s = "
                  f"{100 * idle / elapsed:.3f} % of a core")
        finally:
            for agent in running:
                if agent.proc is not None and agent.proc.poll() is None:
                    agent.stop()
            reg.stop()
    return 0


if __name__ == "__main__":
    # `kill` and `timeout` send SIGTERM: unwind as for Ctrl-C, so the cleanups run
    # (servers, namespaces, temporary directories holding CA keys and tokens).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
