"""scripts/demo: registrar + agent, real TLS, a few rotations, then status."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> str:
    return subprocess.run([PY, "-m", *args], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


def wait_for(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mesh-demo-"))
    reg_dir, agent_dir = work / "registrar", work / "vm"
    agent_dir.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        say(f"registrar: new mesh CA for trust domain demo.mesh in {reg_dir}")
        cli("registrar", "init", "--state-dir", str(reg_dir), "--trust-domain", "demo.mesh")
        port = free_port()
        config = reg_dir / "demo.yaml"
        config.write_text(yaml.safe_dump({
            "trust_domain": "demo.mesh", "listen": f"127.0.0.1:{port}",
            "state_dir": str(reg_dir), "log_level": "info",
            "evidence": {"join_token": {}},
            "groups": [{"name": "web", "namespace": "shop", "service_account": "web-vm",
                        "cert_ttl": "20s", "labels": {"app": "web"}}],
        }))
        reg_log = (work / "registrar.log").open("wb")
        procs.append(subprocess.Popen([PY, "-m", "registrar", "serve", "--config", str(config)],
                                      cwd=REPO, stdout=reg_log, stderr=subprocess.STDOUT))
        wait_for("the registrar", lambda: "serving" in (work / "registrar.log").read_text())
        print(f"    serving https://127.0.0.1:{port} (certificates live 20 s for the demo)")

        say("operator: mint a one-time join token for group 'web'")
        token = cli("registrar", "token", "create", "--config", str(config), "--group", "web",
                    "--ttl", "10m").strip()
        token_file = agent_dir / "bootstrap-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, token.encode() + b"\n")
        os.close(fd)
        print(f"    written to {token_file} (0600); it is never printed or logged")

        status_port = free_port()
        agent_config = agent_dir / "agent.yaml"
        agent_config.write_text(yaml.safe_dump({
            "registrar": {"url": f"https://127.0.0.1:{port}",
                          "ca_file": str(reg_dir / "root-cert.pem")},
            "attestation": {"method": "token", "token_file": str(token_file)},
            "state_dir": str(agent_dir / "state"),
            "status": {"listen": f"127.0.0.1:{status_port}"},
        }))
        say("VM: mesh-agent run (key generated here; only a CSR leaves the VM)")
        started = time.monotonic()
        agent_log = (work / "agent.log").open("wb")
        procs.append(subprocess.Popen(
            [PY, "-m", "agent", "run", "--config", str(agent_config)], cwd=REPO,
            stdout=agent_log, stderr=subprocess.STDOUT))
        status_url = f"http://127.0.0.1:{status_port}"
        wait_for("the agent to be ready", lambda: get_json(f"{status_url}/ready")["ready"])
        status = get_json(f"{status_url}/status")
        print(f"    ready in {time.monotonic() - started:.2f}s as {status['spiffe_id']}")
        print(f"    token file deleted: {not token_file.exists()}")

        say(f"rotation: watching {args.rotations} renewals over mTLS (no token needed)")
        seen = status["serial"]
        while int(status["rotations"]) < args.rotations:  # type: ignore[call-overload]
            time.sleep(0.2)
            status = get_json(f"{status_url}/status")
            if status["serial"] != seen:
                seen = status["serial"]
                print(f"    rotation {status['rotations']}: serial {str(seen)[:16]}..., "
                      f"generation {status['generation']}, expires {status['not_after']}")

        say("mesh-agent status")
        out = subprocess.run([PY, "-m", "agent", "status", "--config", str(agent_config)],
                             cwd=REPO, capture_output=True, text=True)
        print("    " + out.stdout.replace("\n", "\n    "))
        say("registrar inventory: mesh-registrar workloads list")
        print("    " + cli("registrar", "workloads", "list", "--config", str(config))
              .strip().replace("\n", "\n    "))
        say("stopping (SIGTERM): the agent exits 0")
        procs[1].send_signal(signal.SIGTERM)
        print(f"    agent exit code {procs[1].wait(timeout=15)}")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
