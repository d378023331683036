"""Must-show 3 and 4: start/stop cycles, config changes, kill -9 mid-apply, and a
pre-existing Docker-like ruleset: the final ruleset equals the baseline byte for
byte (minus counters), foreign rules are never touched, the next start works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.capture.config import CaptureConfig
from agent.capture.controller import CaptureController
from agent.capture.plan import Probe
from agent.capture.probe import ProbeResult, SubprocessProber
from agent.capture.record import RecordError, RecordStore
from agent.capture.runner import CaptureError, SubprocessRunner
from tests.capture.conftest import BACKENDS
from tests.capture.netns import Topology, ruleset, sh

CRASH = str(Path(__file__).with_name("crash_apply.py"))
A = CaptureConfig(enabled=True, proxy_uid=1337, proxy_gid=1337, probe=False)
B = CaptureConfig(enabled=True, proxy_uid=2000, proxy_gid=2001, probe=False, ipv6=False,
                  inbound_ports=(8080, 9090), include_outbound_cidrs=("10.0.0.0/8",),
                  exclude_outbound_ports=(5432, 6379), exclude_interfaces=("docker0",))

DOCKER = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d {loop} -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {net} ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8443 -j DNAT --to-destination {dnat}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
COMMIT
"""
FIREWALL = """table inet fw {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 22 accept
\t}
}
"""


def with_existing_rules(ns: str, backend: str) -> None:
    """Docker's NAT/filter chains (iptables) plus a firewalld-like native nft table."""
    variant = "legacy" if backend == "iptables-legacy" else "nft"
    sh("ip", "netns", "exec", ns, f"iptables-{variant}-restore", stdin=DOCKER.format(
        loop="127.0.0.0/8", net="172.17.0.0/16", dnat="172.17.0.2:443"))
    sh("ip", "netns", "exec", ns, f"ip6tables-{variant}-restore", stdin=DOCKER.format(
        loop="::1/128", net="fd00:dead::/64", dnat="[fd00:dead::2]:443"))
    sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=FIREWALL)


def without_ours(text: str) -> str:
    text = re.sub(r"table inet mesh_agent \{.*?\n\}\n?", "", text, flags=re.S)
    text = re.sub(r"\tchain MESH_\w+ \{.*?\n\t\}\n", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if "MESH_" not in line and line.strip())


def controller(topo: Topology, config: CaptureConfig | None, state: Path,
               **kwargs: object) -> CaptureController:
    runner = SubprocessRunner(topo.ns(topo.vm))
    # The probe must run in the VM's namespace, like the agent runs in the VM's.
    kwargs.setdefault("prober", SubprocessProber(runner, sys.executable))
    return CaptureController(config, state_dir=state, runner=runner,
                             **kwargs)  # type: ignore[arg-type]


def cfg(config: CaptureConfig, **changes: object) -> CaptureConfig:
    return CaptureConfig(**{**config.__dict__, **changes})


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_hundred_cycles_with_config_changes(vm_ns: Topology, backend: str,
                                            tmp_path: Path) -> None:
    with_existing_rules(vm_ns.vm, backend)
    baseline = ruleset(vm_ns.vm)
    ns_runner = SubprocessRunner(vm_ns.ns(vm_ns.vm))

    async def cycles() -> None:
        ctl = CaptureController(cfg(A, backend=backend), state_dir=tmp_path, runner=ns_runner,
                                prober=SubprocessProber(ns_runner, sys.executable))
        for i in range(100):
            first, second = (A, B) if i % 2 == 0 else (B, A)
            # Every 10th start also proves redirection with a real probe connection.
            ctl.reconfigure(cfg(first, backend=backend, probe=i % 10 == 0))
            record = await ctl.apply()
            assert record.phase == "applied" and record.backend == backend
            if i % 20 == 0:
                applied = ruleset(vm_ns.vm)
                assert applied != baseline
                assert without_ours(applied) == without_ours(baseline)  # Docker untouched
            if i % 3 == 0:
                await ctl.apply()  # idempotent re-apply of the same plan
            ctl.reconfigure(cfg(second, backend=backend))  # config changes before stop
            if i % 4 == 1:
                await ctl.apply()  # ... or is applied over the old rules
            await ctl.remove()
        assert ruleset(vm_ns.vm) == baseline
        await ctl.apply()  # the next start succeeds
        await ctl.remove()

    asyncio.run(cycles())
    assert ruleset(vm_ns.vm) == baseline


@pytest.mark.netns
@pytest.mark.parametrize("backend", ["iptables-nft", "nftables"])
def test_fresh_machine_baseline_is_exact(vm_ns: Topology, backend: str, tmp_path: Path) -> None:
    """No nat table before: none after (nf_tables tables we created are deleted)."""
    baseline = ruleset(vm_ns.vm)
    assert "MESH" not in baseline
    ctl = controller(vm_ns, cfg(A, backend=backend), tmp_path)

    async def run() -> None:
        for _ in range(3):
            await ctl.apply()
            assert ruleset(vm_ns.vm) != baseline
            await ctl.remove()

    asyncio.run(run())
    assert ruleset(vm_ns.vm) == baseline


@pytest.mark.netns
def test_fresh_machine_legacy_leaves_only_empty_kernel_tables(vm_ns: Topology,
                                                              tmp_path: Path) -> None:
    baseline = ruleset(vm_ns.vm)
    ctl = controller(vm_ns, cfg(A, backend="iptables-legacy"), tmp_path)
    asyncio.run(ctl.apply())
    asyncio.run(ctl.remove())
    after = ruleset(vm_ns.vm)
    # The one difference: legacy nat tables, empty, that the kernel cannot delete.
    assert after != baseline
    assert ruleset(vm_ns.vm, ignore_empty_legacy=True) == baseline


def _crash(topo: Topology, backend: str, state: Path, mode: str, delay: float = 0.0) -> str:
    proc = subprocess.Popen([sys.executable, CRASH, topo.vm, backend, str(state), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if mode == "pause":
        assert proc.stdout.readline().strip() == "MIDWAY"
    else:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(delay)
    with contextlib.suppress(ProcessLookupError):  # a quick apply may have finished
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.stdout.read()


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_mid_apply_then_restart(vm_ns: Topology, backend: str, tmp_path: Path) -> None:
    with_existing_rules(vm_ns.vm, backend)
    baseline = ruleset(vm_ns.vm)
    _crash(vm_ns, backend, tmp_path, "pause")
    record = RecordStore(tmp_path).load()
    assert record is not None and record.phase == "applying"
    assert ruleset(vm_ns.vm) != baseline  # something really was left behind
    rng = random.Random(backend)
    for _ in range(3):  # and at arbitrary moments of an apply
        _crash(vm_ns, backend, tmp_path, "run", rng.uniform(0.05, 0.3))

    async def restart() -> None:
        ctl = controller(vm_ns, cfg(A, backend=backend), tmp_path)
        await ctl.reconcile_on_start()
        assert ruleset(vm_ns.vm) == baseline
        assert (await ctl.apply()).phase == "applied"
        await ctl.remove()

    asyncio.run(restart())
    assert ruleset(vm_ns.vm) == baseline


class FailingProber:
    async def probe(self, probe: Probe) -> ProbeResult:
        return ProbeResult(False, "nothing answered")


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_verification_rolls_back(vm_ns: Topology, backend: str, tmp_path: Path) -> None:
    with_existing_rules(vm_ns.vm, backend)
    baseline = ruleset(vm_ns.vm)
    ctl = controller(vm_ns, cfg(A, backend=backend, probe=True), tmp_path,
                     prober=FailingProber())
    with pytest.raises(CaptureError, match="probe failed"):
        asyncio.run(ctl.apply())
    assert ruleset(vm_ns.vm) == baseline
    record = RecordStore(tmp_path).load()
    assert record is not None and record.phase == "removed"


@pytest.mark.netns
def test_real_probe_reads_original_dst(vm_ns: Topology, tmp_path: Path) -> None:
    """Nothing listens on 15001: the probe owns it and checks SO_ORIGINAL_DST."""
    runner = SubprocessRunner(vm_ns.ns(vm_ns.vm))
    # Another address than below: its unreplied conntrack entry would bypass nat later.
    probe = Probe(4, ("192.0.2.9",), 15999, 15001)
    before = asyncio.run(SubprocessProber(runner).probe(probe))
    assert not before.ok  # not redirected yet: must fail, or the probe proves nothing
    ctl = controller(vm_ns, cfg(A, backend="nftables", probe=True), tmp_path)
    asyncio.run(ctl.apply())
    try:
        for family, address in ((4, "192.0.2.1"), (6, "2001:db8::1")):
            result = asyncio.run(SubprocessProber(runner).probe(Probe(family, (address,),
                                                                      15999, 15001)))
            assert result.ok and result.original_dst == f"{address}:15999", result
    finally:
        asyncio.run(ctl.remove())


@pytest.mark.netns
def test_backend_is_never_flipped_on_restart(vm_ns: Topology, tmp_path: Path) -> None:
    ctl = controller(vm_ns, cfg(A, backend="iptables-legacy"), tmp_path)
    asyncio.run(ctl.apply())
    asyncio.run(ctl.remove())
    # Restart with "auto": detection would pick nft (the default, nothing has rules),
    # but the recorded choice stands.
    again = controller(vm_ns, cfg(A, backend="auto"), tmp_path)
    record = asyncio.run(again.apply())
    try:
        assert (record.backend, record.backend_source) == ("iptables-legacy", "configured")
        assert "MESH_OUTPUT" in sh(*vm_ns.ns(vm_ns.vm), "iptables-legacy-save")
        assert "MESH_OUTPUT" not in sh(*vm_ns.ns(vm_ns.vm), "iptables-nft-save")
    finally:
        asyncio.run(again.remove())


@pytest.mark.netns
def test_remove_needs_no_config(vm_ns: Topology, tmp_path: Path) -> None:
    baseline = ruleset(vm_ns.vm, ignore_empty_legacy=True)
    asyncio.run(controller(vm_ns, cfg(B, backend="nftables"), tmp_path).apply())
    record = asyncio.run(controller(vm_ns, None, tmp_path).remove())
    assert record is not None and record.phase == "removed"
    assert ruleset(vm_ns.vm, ignore_empty_legacy=True) == baseline


@pytest.mark.netns
def test_envoy_down_policies(vm_ns: Topology, tmp_path: Path) -> None:
    async def run() -> None:
        closed = controller(vm_ns, cfg(A, backend="nftables"), tmp_path / "closed")
        await closed.apply()
        await closed.proxy_down()
        await asyncio.sleep(0)
        assert not closed.failed_open  # fail-closed: capture stays
        assert (await closed.status()).installed
        await closed.remove()

        gate = asyncio.Event()

        async def sleep(seconds: float) -> None:
            assert seconds == 45.0
            await gate.wait()

        opened = controller(vm_ns, cfg(A, backend="nftables", envoy_down_policy="fail-open",
                                       fail_open_after=45.0), tmp_path / "open", sleep=sleep)
        await opened.apply()
        await opened.proxy_down()
        await opened.proxy_up()  # back before the deadline: nothing changes
        assert (await opened.status()).installed and not opened.failed_open
        await opened.proxy_down()
        gate.set()
        for _ in range(200):
            if opened.failed_open:
                break
            await asyncio.sleep(0.01)
        assert opened.failed_open and not (await opened.status()).installed
        await opened.proxy_up()  # proxy back: capture re-applied
        status = await opened.status()
        assert status.installed and status.matches_plan and not opened.failed_open
        await opened.remove()

    asyncio.run(run())


def test_record_is_versioned_and_private(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    from agent.capture.record import CaptureRecord

    store.save(CaptureRecord(backend="nftables", backend_source="detected"))
    assert (tmp_path / "capture.json").stat().st_mode & 0o777 == 0o600
    doc = json.loads((tmp_path / "capture.json").read_text())
    assert doc["schema"] == 1 and doc["backend"] == "nftables"
    doc["schema"] = 99
    (tmp_path / "capture.json").write_text(json.dumps(doc))
    with pytest.raises(RecordError, match="newer than this agent"):
        store.load()
    (tmp_path / "capture.json").write_text("{")
    with pytest.raises(RecordError, match=str(tmp_path / "capture.json")):
        store.load()


def test_changes_are_serialised_across_processes(tmp_path: Path) -> None:
    """``capture apply`` from a shell must wait while the daemon changes rules."""
    import fcntl

    ctl = CaptureController(None, state_dir=tmp_path, runner=SubprocessRunner())

    async def run() -> None:
        fd = os.open(tmp_path / "capture.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's change in progress
        task = asyncio.create_task(ctl.remove())
        await asyncio.sleep(0.3)
        assert not task.done()
        os.close(fd)
        assert await asyncio.wait_for(task, 5) is None  # then it proceeds (nothing recorded)

    asyncio.run(run())
