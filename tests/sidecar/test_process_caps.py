"""Envoy never gets the agent's capabilities.

Under its unit the agent is a non-root user holding CAP_NET_ADMIN, CAP_SETUID
... as ambient capabilities; a plain uid change between non-root uids keeps
them. The outer ``setpriv`` here builds exactly that agent (uid 4242 with
ambient caps); inside it we run the runner's own command line."""

from __future__ import annotations

import asyncio
import subprocess

from agent.proxy.user import ProxyIdentity
from agent.sidecar.process import SubprocessRunner, drop_argv

PROXY = ProxyIdentity(1337, 1337)
CAPS = "+net_admin,+net_raw,+setuid,+setgid,+chown,+kill"
AS_AGENT = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups",
            f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}", "--"]


def status_of(argv: list[str]) -> dict[str, str]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def no_caps(status: dict[str, str]) -> bool:
    return all(int(status[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapAmb"))


def test_the_simulated_agent_really_holds_capabilities(root: None) -> None:
    agent = status_of([*AS_AGENT, "cat", "/proc/self/status"])
    assert agent["Uid"].split()[0] == "4242"
    assert int(agent["CapEff"], 16) != 0 and int(agent["CapAmb"], 16) != 0


def test_a_plain_uid_change_would_leak_them(root: None) -> None:
    """The control: without clearing, the child of a non-root agent keeps its caps."""
    leaked = status_of([*AS_AGENT, "setpriv", "--reuid=1337", "--regid=1337",
                        "--clear-groups", "--", "cat", "/proc/self/status"])
    assert not no_caps(leaked)


def test_envoy_command_line_runs_as_proxy_without_capabilities(root: None) -> None:
    child = status_of([*AS_AGENT, *drop_argv(["/bin/cat", "/proc/self/status"], PROXY)])
    assert child["Uid"].split()[:2] == ["1337", "1337"]
    assert child["Gid"].split()[:2] == ["1337", "1337"]
    assert child["Groups"].strip() == ""
    assert no_caps(child), child


def test_the_runner_uses_that_command_line(root: None) -> None:
    async def run() -> str:
        proc = await SubprocessRunner().start(["/bin/cat", "/proc/self/status"], user=PROXY)
        assert proc.stdout is not None
        out = await proc.stdout.read()  # the runner's own pipe: read it, not communicate()
        await proc.wait()
        return out.decode()

    text = asyncio.run(run())
    status = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    assert status["Uid"].split()[0] == "1337" and no_caps(status)



PARENT = """
import asyncio, sys, time
from agent.sidecar.process import SubprocessRunner
from agent.proxy.user import ProxyIdentity

async def main():
    proc = await SubprocessRunner().start(["/bin/sleep", "300"], user=ProxyIdentity(1337, 1337))
    print(proc.pid, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def test_envoy_does_not_outlive_an_agent_killed_with_sigkill(root: None) -> None:
    import os
    import signal
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=repo, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    # setpriv arms the signal just before it execs: wait for the exec, as an
    # agent's Envoy is long past it by the time anything kills the agent.
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline, "the child never exec'd"
        time.sleep(0.01)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its SIGKILLed parent")


def test_envoy_as_the_proxy_user_can_reopen_its_stdout(root: None) -> None:
    """istiod's accessLogFile /dev/stdout is opened by path, as the proxy user."""
    async def run() -> str:
        proc = await SubprocessRunner().start(
            ["/bin/sh", "-c", "echo via-path > /dev/stdout"], user=PROXY)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        assert await proc.wait() == 0, err
        return out.decode()

    assert asyncio.run(run()) == "via-path\n"
