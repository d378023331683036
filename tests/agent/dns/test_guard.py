"""The guard's decisions without sockets: when it reports the proxy down, when it
restarts it (spaced out while restarts do not help), and when it reports it back.
Its real checks, capture rules and a real daemon are in test_netns.py and
tests/integration/test_mesh_dns_daemon.py."""

from __future__ import annotations

import asyncio

from agent.dns.guard import DnsGuard
from tests.fakes.clock import FakeClock


def _run(answers: list[bool]) -> tuple[list[int], list[tuple[int, bool, int]]]:
    """Step the guard once per answer; the misses at which it restarted the proxy, and
    each change it reported as (step, answering, restarts)."""
    at = [0]  # the current step
    restarted: list[int] = []
    changes: list[tuple[int, bool, int]] = []

    async def check() -> bool:
        return answers[at[0]]

    async def restart() -> None:
        restarted.append(at[0])

    async def main() -> None:
        guard = DnsGuard(None, None, check, FakeClock(), failures=2, restart=restart,
                         on_change=lambda g: changes.append((at[0], g.answering, g.restarts)))
        for at[0] in range(len(answers)):
            await guard.step()

    asyncio.run(main())
    return restarted, changes


def test_two_misses_report_down_and_restart_then_an_answer_reports_up() -> None:
    restarted, changes = _run([True, False, False, True, True])
    assert restarted == [2]
    assert changes == [(2, False, 1), (3, True, 1)]


def test_restarts_that_do_not_help_are_spaced_out() -> None:
    restarted, _ = _run([False] * 40)
    # Misses 2, 4, 8, 16, 32 (step = misses - 1): not every second.
    assert restarted == [1, 3, 7, 15, 31]


def test_one_miss_changes_nothing() -> None:
    restarted, changes = _run([True, False, True, False, True])
    assert restarted == [] and changes == []
