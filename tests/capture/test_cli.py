"""``mesh-agent capture plan|apply|status|remove`` end to end, run inside a netns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshcore.exits import EX_UNAVAILABLE
from tests.capture.netns import Topology, ruleset

AGENT = str(Path(sys.executable).with_name("mesh-agent"))


def config_text(state: Path, extra: str = "") -> str:
    # No sidecar here: the "proxy" is another process (external_proxy) the test starts.
    return (f"registrar:\n  url: https://10.78.0.9:8443\nstate_dir: {state}\n"
            "proxy:\n  uid: 1337\n  gid: 1337\n"
            "capture:\n  enabled: true\n  external_proxy: true\n  backend: iptables-nft\n"
            f"{extra}")


def cli(topo: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*topo.ns(topo.vm), AGENT, "capture", *args], capture_output=True,
                          text=True, check=False, timeout=60)


@pytest.mark.netns
def test_cli_plan_apply_status_remove(vm_ns: Topology, tmp_path: Path) -> None:
    conf, state = tmp_path / "agent.yaml", tmp_path / "state"
    conf.write_text(config_text(state))
    baseline = ruleset(vm_ns.vm)

    plan = cli(vm_ns, "plan", "--config", str(conf))
    assert plan.returncode == 0, plan.stderr
    assert "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in plan.stdout
    assert "-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN" in plan.stdout
    assert "# always direct: registrar 10.78.0.9/32 port 8443" in plan.stdout
    assert "-A MESH_OUTPUT -d 10.78.0.9/32 -p tcp -m tcp --dport 8443 -j RETURN" in plan.stdout
    assert "# backend: iptables-nft (configured" in plan.stdout
    assert ruleset(vm_ns.vm) == baseline  # plan changes nothing

    refused = cli(vm_ns, "apply", "--config", str(conf))  # nobody serves 15001 yet
    # An operational failure (69), not a bug (1).
    assert refused.returncode == EX_UNAVAILABLE and "nothing listens there" in refused.stderr, \
        refused
    assert ruleset(vm_ns.vm) == baseline  # rolled back
    vm_ns.serve(vm_ns.vm, "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001")
    applied = cli(vm_ns, "apply", "--config", str(conf))
    assert applied.returncode == 0, applied.stderr
    assert "applied and verified: backend iptables-nft" in applied.stdout
    assert (state / "capture.json").stat().st_mode & 0o777 == 0o600

    status = cli(vm_ns, "status", "--config", str(conf))
    assert status.returncode == 0, status.stdout
    for text in ("capture: applied", "backend: iptables-nft (configured)",
                 "by: mesh-agent capture apply (pid", "match the current config"):
        assert text in status.stdout

    conf.write_text(config_text(state, "  exclude_outbound_ports: [5432]\n"))
    drift = cli(vm_ns, "status", "--config", str(conf))
    assert drift.returncode == 3
    assert "do NOT match the current config" in drift.stdout

    conf.write_text("capture: [this is: not valid\n")
    assert cli(vm_ns, "plan", "--config", str(conf)).returncode == 78
    removed = cli(vm_ns, "remove", "--config", str(conf), "--state-dir", str(state))
    assert removed.returncode == 0, removed.stderr
    assert "config unusable" in removed.stderr
    assert ruleset(vm_ns.vm) == baseline
    after = cli(vm_ns, "status", "--config", str(conf), "--state-dir", str(state))
    assert "capture: removed" in after.stdout and "installed: 0 rules" in after.stdout


def test_capture_without_a_proxy_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "agent.yaml"
    conf.write_text(config_text(tmp_path / "state").replace("  external_proxy: true\n", ""))
    result = subprocess.run([AGENT, "capture", "apply", "--config", str(conf)],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 78
    assert f"{conf}: capture.enabled: is true but sidecar.enabled is false" in result.stderr
    assert "capture.external_proxy: true" in result.stderr


@pytest.mark.netns
def test_legacy_remove_names_the_tables_that_stay_and_status_is_0(vm_ns: Topology,
                                                                  tmp_path: Path) -> None:
    conf, state = tmp_path / "agent.yaml", tmp_path / "state"
    conf.write_text(config_text(state).replace("iptables-nft", "iptables-legacy")
                    + "  ipv6: true\nsidecar:\n  ipv6: true\n")
    vm_ns.serve(vm_ns.vm, "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001")
    applied = cli(vm_ns, "apply", "--config", str(conf))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    removed = cli(vm_ns, "remove", "--config", str(conf))
    assert removed.returncode == 0, removed.stderr
    assert "baseline" not in removed.stdout
    assert "the kernel cannot delete a legacy table" in removed.stdout, removed.stdout
    assert removed.stdout.rstrip().endswith("ipv4 nat, ipv6 nat"), removed.stdout
    # Removed on purpose while the config still says enabled: true: not drift.
    after = cli(vm_ns, "status", "--config", str(conf))
    assert after.returncode == 0, after.stdout
    assert "capture: removed" in after.stdout and "capture was removed" in after.stdout
