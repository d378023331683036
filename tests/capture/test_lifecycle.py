"""Must-show 3 and 4: start/stop cycles, config changes, kill -9 mid-apply, and a
pre-existing Docker-like ruleset: the final ruleset equals the baseline byte for
byte (minus counters), foreign rules are never touched, the next start works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.capture.controller import CaptureController
from agent.capture.probe import SubprocessProber
from agent.capture.record import RecordStore
from agent.capture.runner import SubprocessRunner
from tests.capture.conftest import BACKENDS
from tests.capture.harness import A, B, cfg, controller, with_existing_rules, without_ours
from tests.capture.netns import Topology, ruleset

CRASH = str(Path(__file__).with_name("crash_apply.py"))


@pytest.mark.netns
@pytest.mark.parametrize("backend", BACKENDS)
def test_hundred_cycles_with_config_changes(vm_ns: Topology, backend: str,
                                            tmp_path: Path) -> None:
    with_existing_rules(vm_ns.vm, backend)
    baseline = ruleset(vm_ns.vm)
    ns_runner = SubprocessRunner(vm_ns.ns(vm_ns.vm))
    # The stand-in proxy the probe needs: only a proxy on 15001 can answer it.
    vm_ns.serve(vm_ns.vm, "proxy:4:0.0.0.0:15001", "proxy:6:[::]:15001")

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
