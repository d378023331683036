"""Health crosses threads (the event loop writes, the status endpoint's thread
reads), so it is published as frozen snapshots: replaced, never changed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.status.health import Health, Snapshot
from agent.status.server import StatusServer
from tests.fakes.clock import FakeClock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_snapshot_cannot_be_changed() -> None:
    health = Health()
    health.condition("sidecar", False)
    health.detail("sidecar", {"state": "starting"})
    health.failed("unreachable", "down")
    snap = health.current
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.phase = "ready"  # type: ignore[misc]
    for mapping in (snap.conditions, snap.failures, snap.details, snap.details["sidecar"]):
        with pytest.raises(TypeError):
            mapping["x"] = 1  # type: ignore[index]


def test_every_change_publishes_a_new_snapshot_and_leaves_the_old_one_alone() -> None:
    health = Health()
    now = FakeClock().now()
    changes = [
        lambda: health.update(phase="attesting", attestor="token"),
        lambda: health.condition("capture", False),
        lambda: health.condition("capture", True),
        lambda: health.detail("sidecar", {"state": "ready", "restarts": 1}),
        lambda: health.failed("unreachable", "registrar down"),
        lambda: health.failed("unreachable", "still down"),
        lambda: health.update(rotations=1, last_error=None, phase="ready"),
    ]
    for change in changes:
        before = health.current
        seen = json.dumps(before.as_dict(now), sort_keys=True)
        change()
        assert health.current is not before
        assert json.dumps(before.as_dict(now), sort_keys=True) == seen
    final = health.current
    assert dict(final.failures) == {"unreachable": 2}
    assert dict(final.conditions) == {"capture": True}
    assert final.as_dict(now)["sidecar"] == {"state": "ready", "restarts": 1}


def test_the_status_endpoint_never_shows_half_an_update() -> None:
    """The loop changes two fields together many times while a thread reads
    /status; every answer must pair them as written."""
    health = Health()
    health.update(rotations=0, last_error="r0")
    port = free_port()
    server = StatusServer(health, FakeClock(), host="127.0.0.1", port=port)
    torn: list[dict[str, Any]] = []
    answers = 0
    done = threading.Event()

    def read() -> None:
        nonlocal answers
        while not done.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                body = json.loads(r.read())
            answers += 1
            if body["last_error"] != f"r{body['rotations']}":
                torn.append(body)

    loop = _loop_in_thread()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    reader = threading.Thread(target=read)
    reader.start()
    try:
        n, deadline = 0, time.monotonic() + 2.0
        while time.monotonic() < deadline:
            n += 1
            health.update(rotations=n, last_error=f"r{n}")
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(old)
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
    assert answers > 50
    assert torn == []


def test_snapshot_defaults_match_a_fresh_agent() -> None:
    snap = Snapshot()
    now = FakeClock().now()
    assert snap.phase == "starting" and not snap.ready(now)
    assert "no credentials yet" in snap.summary(now)


def _loop_in_thread() -> asyncio.AbstractEventLoop:
    """An event loop running in a thread named "loop" (the agent's loop stand-in)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="loop", daemon=True).start()
    return loop


def _wakeups(thread: threading.Thread) -> int:
    """How often the kernel has run ``thread`` after it slept (voluntary switches)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def _settled(thread: threading.Thread, *, quiet: float, deadline: float) -> None:
    """Wait until ``thread`` has not woken for ``quiet`` seconds; fail at ``deadline``."""
    last = _wakeups(thread)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _wakeups(thread)
        if now == last:
            return
        last = now
    pytest.fail(f"the loop thread kept waking for {quiet} s at a time until the deadline")


def test_an_idle_status_endpoint_never_wakes_the_loop_and_still_answers_and_stops() -> None:
    """Serving the endpoint costs an idle agent nothing: its event loop sleeps
    until a client comes (a polling server would wake it again and again)."""
    port = free_port()
    server = StatusServer(Health(), FakeClock(), host="127.0.0.1", port=port)
    loop = _loop_in_thread()
    thread = next(t for t in threading.enumerate() if t.name == "loop")
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            assert r.status == 200
        # Closing that connection still wakes the loop (and on a loaded machine
        # each wait for the GIL counts as a wake-up too): let it settle first,
        # which a loop polling at 0.5 s never does.
        _settled(thread, quiet=1.0, deadline=time.monotonic() + 20)
        before = _wakeups(thread)
        time.sleep(3.0)  # six wake-ups' worth for a 0.5 s poll
        assert _wakeups(thread) - before <= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=30)
        assert missing.value.code == 404
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30)
