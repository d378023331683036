"""The controller's promises beyond the cycles: rollback on a failed probe, a real
probe that only a proxy can answer, the backend never flipping, removal without config, the
Envoy-down policies, drift repair, IPv6-less kernels, the record and the lock."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from agent.capture.controller import CaptureController
from agent.capture.plan import Probe
from agent.capture.probe import ProbeResult, SubprocessProber
from agent.capture.record import CaptureRecord, RecordError, RecordStore
from agent.capture.runner import CaptureError, SubprocessRunner
from tests.capture.conftest import BACKENDS
from tests.capture.harness import A, B, cfg, controller, with_existing_rules
from tests.capture.netns import Topology, ruleset, sh
from tests.fakes.clock import FakeClock


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
def test_probe_needs_another_process_to_answer(vm_ns: Topology, tmp_path: Path) -> None:
    """The agent never answers its own probe: only a proxy owning 15001 can."""
    runner = SubprocessRunner(vm_ns.ns(vm_ns.vm))
    # Another address than below: its unreplied conntrack entry would bypass nat later.
    before = asyncio.run(SubprocessProber(runner).probe(Probe(4, ("192.0.2.9",), 15999, 15001)))
    assert not before.ok  # not redirected yet: must fail, or the probe proves nothing
    ctl = controller(vm_ns, cfg(A, backend="nftables", probe=False), tmp_path)
    asyncio.run(ctl.apply())
    probes = [Probe(4, ("192.0.2.1",), 15999, 15001), Probe(6, ("2001:db8::1",), 15999, 15001)]
    try:
        for probe in probes:  # redirected, but nobody listens on 15001
            result = asyncio.run(SubprocessProber(runner).probe(probe))
            assert not result.ok and "nothing listens there" in result.detail, result
        # The external proxy: another process owning the outbound port.
        vm_ns.serve(vm_ns.vm, "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001")
        for probe in probes:
            result = asyncio.run(SubprocessProber(runner).probe(probe))
            assert result.ok and "answered by the proxy on port 15001" in result.detail, result
    finally:
        asyncio.run(ctl.remove())


@pytest.mark.netns
def test_apply_with_nobody_on_the_proxy_port_rolls_back(vm_ns: Topology,
                                                        tmp_path: Path) -> None:
    """Capture alone would strand every outbound connection: the probe refuses it."""
    baseline = ruleset(vm_ns.vm, ignore_empty_legacy=True)
    ctl = controller(vm_ns, cfg(A, backend="iptables-nft", probe=True), tmp_path)
    with pytest.raises(CaptureError, match=r"probe failed.*nothing listens there"):
        asyncio.run(ctl.apply())
    assert ruleset(vm_ns.vm, ignore_empty_legacy=True) == baseline
    record = RecordStore(tmp_path).load()
    assert record is not None and record.phase == "removed"
    # Once the (external) proxy serves its ports, the same apply verifies and stays.
    vm_ns.serve(vm_ns.vm, "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001")
    record = asyncio.run(ctl.apply())
    try:
        assert record.phase == "applied"
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
    """Fail-open after exactly ``fail_open_after`` of virtual time, not before."""
    async def run() -> None:
        clock = FakeClock()
        closed = controller(vm_ns, cfg(A, backend="nftables"), tmp_path / "closed", clock=clock)
        await closed.apply()
        closed.proxy_down()
        clock.advance(3600)
        assert not await closed.fail_open_if_due()
        assert not closed.failed_open  # fail-closed: capture stays
        assert (await closed.status()).installed
        await closed.remove()

        opened = controller(vm_ns, cfg(A, backend="nftables", envoy_down_policy="fail-open",
                                       fail_open_after=45.0), tmp_path / "open", clock=clock)
        await opened.apply()
        opened.proxy_down()
        clock.advance(44.9)
        assert not await opened.fail_open_if_due()
        await opened.proxy_up()  # back before the deadline: nothing changes
        clock.advance(10)
        assert not await opened.fail_open_if_due()  # the pending fail-open was dropped
        assert (await opened.status()).installed and not opened.failed_open
        opened.proxy_down()
        clock.advance(44.9)
        opened.proxy_down()  # still down: the first moment counts, not the latest report
        clock.advance(0.1)
        assert await opened.fail_open_if_due()
        assert opened.failed_open and not (await opened.status()).installed
        await opened.proxy_up()  # proxy back: capture re-applied
        status = await opened.status()
        assert status.installed and status.matches_plan and not opened.failed_open
        await opened.remove()

    asyncio.run(run())


def test_record_is_versioned_and_private(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
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


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_is_reported_and_repaired(vm_ns: Topology, backend: str, tmp_path: Path) -> None:
    """What a firewalld reload does: our rules vanish; status says so, repair restores."""
    ctl = controller(vm_ns, cfg(A, backend=backend), tmp_path)

    async def run() -> None:
        await ctl.apply()
        assert not await ctl.repair_drift()  # nothing to repair
        if backend == "nftables":
            sh(*vm_ns.ns(vm_ns.vm), "nft", "delete", "table", "inet", "mesh_agent")
        else:
            tool = "iptables-legacy" if backend == "iptables-legacy" else "iptables-nft"
            sh(*vm_ns.ns(vm_ns.vm), tool, "-t", "nat", "-F", "MESH_OUTPUT")
        status = await ctl.status()
        assert not status.matches_record and not status.matches_plan
        assert await ctl.repair_drift()
        status = await ctl.status()
        assert status.matches_record and status.matches_plan
        await ctl.remove()

    asyncio.run(run())


@pytest.mark.netns
def test_kernel_without_ipv6_captures_ipv4_only(vm_ns: Topology, tmp_path: Path) -> None:
    ctl = controller(vm_ns, cfg(A, backend="iptables-nft"), tmp_path, has_ipv6=lambda: False)
    record = asyncio.run(ctl.apply())
    try:
        assert record.families == (4,)
        assert all(k.startswith("ipv4 ") for k in record.applied)
    finally:
        asyncio.run(ctl.remove())
