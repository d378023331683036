"""The readiness probe: spec parsing, the threshold state machine, the real
runners against real local sockets and commands, and the reporter's timing on
a virtual clock."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest

from agent.health.reporter import HealthReporter
from agent.health.runners import run_probe
from agent.health.spec import ProbeSpec, ProbeSpecError, parse_probe
from agent.health.state import DRAINING, HEALTHY, UNHEALTHY, Readiness
from tests.fakes.clock import FakeClock


def test_parse_defaults_and_fields() -> None:
    spec = parse_probe({"httpGet": {"path": "/healthz", "port": 9090}, "periodSeconds": 2})
    assert spec == ProbeSpec("httpGet", port=9090, path="/healthz", period=2.0)
    assert parse_probe({"tcpSocket": {"port": 1}}).kind == "tcpSocket"
    assert parse_probe({"exec": {"command": ["true"]}}).command == ("true",)


@pytest.mark.parametrize(("doc", "key"), [
    ({}, ""),
    ({"httpGet": {"port": 1}, "tcpSocket": {"port": 1}}, ""),
    ({"httpGet": {"path": "/"}}, "httpGet.port"),
    ({"tcpSocket": {"port": 70000}}, "tcpSocket.port"),
    ({"httpGet": {"port": 80, "path": "x y"}}, "httpGet.path"),
    ({"exec": {"command": []}}, "exec.command"),
    ({"tcpSocket": {"port": 1}, "failureThreshold": 0}, "failureThreshold"),
    ({"tcpSocket": {"port": 1}, "periodSeconds": True}, "periodSeconds"),
])
def test_parse_rejects_with_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ProbeSpecError) as err:
        parse_probe(doc)
    assert err.value.key == key and err.value.reason == "bad_probe"


def test_thresholds() -> None:
    r = Readiness(success_threshold=2, failure_threshold=3)
    assert r.health == UNHEALTHY
    assert r.observe(True) is None
    assert r.observe(False) is None  # a failure resets the success streak
    assert r.observe(True) is None
    assert r.observe(True) == HEALTHY
    assert [r.observe(False), r.observe(False)] == [None, None]
    assert r.observe(True) is None  # streak broken: still healthy
    assert [r.observe(False) for _ in range(3)] == [None, None, UNHEALTHY]
    assert r.observe(False) is None  # reported once


def test_draining_is_final() -> None:
    r = Readiness(1, 1)
    r.observe(True)
    assert r.drain() == DRAINING
    assert r.observe(True) is None and r.observe(False) is None
    assert r.health == DRAINING and r.drain() is None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = {"/ok": 200, "/redirect": 302, "/bad": 503}.get(self.path, 404)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_runners_against_real_app(http_port: int) -> None:
    def run(spec: ProbeSpec) -> bool:
        return asyncio.run(run_probe(spec))

    assert run(ProbeSpec("httpGet", port=http_port, path="/ok"))
    assert run(ProbeSpec("httpGet", port=http_port, path="/redirect"))  # 2xx-3xx pass
    assert not run(ProbeSpec("httpGet", port=http_port, path="/bad"))
    assert run(ProbeSpec("tcpSocket", port=http_port))
    assert not run(ProbeSpec("tcpSocket", port=_free_port()))
    assert not run(ProbeSpec("httpGet", port=_free_port()))
    assert run(ProbeSpec("exec", command=(sys.executable, "-c", "pass")))
    assert not run(ProbeSpec("exec", command=(sys.executable, "-c", "raise SystemExit(1)")))
    assert not run(ProbeSpec("exec", command=("/nonexistent/probe",)))


def test_exec_timeout_kills_the_command() -> None:
    spec = ProbeSpec("exec", command=("sleep", "30"), timeout=0.3)
    started = asyncio.run(_timed(spec))
    assert started < 2.0


async def _timed(spec: ProbeSpec) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert not await run_probe(spec)
    return loop.time() - t0


def test_reporter_reports_changes_within_period_times_threshold() -> None:
    """Healthy on the first success, unhealthy after failureThreshold periods,
    the current health re-sent every report interval, draining sent at once."""
    clock = FakeClock()
    results = iter([True] * 3 + [False] * 10)
    reports: list[tuple[float, str]] = []

    async def runner(spec: ProbeSpec) -> bool:
        return next(results)

    async def report(health: str) -> None:
        reports.append((clock.monotonic() - t0, health))

    spec = ProbeSpec("tcpSocket", port=1, period=2.0, failure_threshold=3)
    reporter = HealthReporter(spec, report, clock, report_interval=5.0, runner=runner)
    t0 = clock.monotonic()

    async def main() -> None:
        task = asyncio.create_task(reporter.run())
        while clock.monotonic() - t0 < 14:
            await asyncio.sleep(0)
            if task.done():
                break
        await reporter.drain()
        await task

    asyncio.run(main())
    # successes at 0, 2, 4; failures at 6, 8, 10 -> unhealthy at 10 = 6 + (3-1) * 2
    assert reports[0] == (0.0, HEALTHY)
    assert (10.0, UNHEALTHY) in reports
    assert any(h == HEALTHY and 4 <= t < 10 for t, h in reports)  # periodic re-report
    assert reports[-1][1] == DRAINING
