"""The state directory itself: unusable is exit 78 naming the path (not a
traceback), and start-up removes every temp file a killed write can leave."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.fixtures.agent import AgentProcess

# Run the agent in its own mount namespace with the state directory bind-mounted
# read-only: root ignores file modes, so only a read-only mount really refuses.
_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


def _bootstrapped(registrar_factory: Any, agent_factory: Any, **kwargs: Any) -> tuple[
        Any, AgentProcess]:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"), **kwargs)
    agent.start()
    agent.wait_ready()
    assert agent.stop() == 0
    return reg, agent


def test_read_only_state_dir_exits_78_naming_it(registrar_factory: Any,
                                                agent_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "ro" / "state"
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, name="ro", token=reg.create_token("web", ttl="10m"),
                          prefix=["unshare", "-m", "--propagation", "private",
                                  "sh", "-c", _READ_ONLY, str(state)])
    state.mkdir(parents=True)
    agent.start()
    assert agent.wait_exit(30) == 78, agent.log_text()[-3000:]
    log = agent.log_text()
    assert "Traceback" not in log
    assert f"state directory {state} is not usable: Read-only file system" in log
    assert agent.token_file.exists(), "the token is kept for the run after the fix"


def test_state_dir_that_is_a_file_exits_78(registrar_factory: Any, agent_factory: Any) -> None:
    reg = registrar_factory(groups={"web": ("prod", "web-vm", 3600)})
    agent = agent_factory(reg, token=reg.create_token("web", ttl="10m"))
    agent.state_dir.write_text("not a directory\n")
    agent.start()
    assert agent.wait_exit(30) == 78, agent.log_text()[-3000:]
    assert "Traceback" not in agent.log_text()
    assert f"state directory {agent.state_dir} is not usable" in agent.log_text()


def test_start_up_removes_every_temp_file_a_killed_write_leaves(
        registrar_factory: Any, agent_factory: Any) -> None:
    _, agent = _bootstrapped(registrar_factory, agent_factory)
    gen = agent.credentials / os.readlink(agent.credentials / "current")
    leftovers = [agent.state_dir / ".state.json.0123456789ab.tmp",
                 gen / ".key.pem.a1b2c3d4e5f6.tmp",
                 agent.credentials / ".current.00aa11bb22cc.tmp"]
    leftovers[0].write_text("{half a state")
    leftovers[1].write_bytes(b"-----BEGIN PRIV")
    leftovers[2].symlink_to(gen.name)  # replace_symlink's temp link, to a directory
    kept = [agent.state_dir / "notes.tmp", agent.state_dir / ".operator.tmp",
            agent.state_dir / ".state.json.XYZ.tmp"]
    for path in kept:
        path.write_text("not ours\n")
    agent.start()
    agent.wait_ready()
    for path in leftovers:
        assert not os.path.lexists(path), path
    for path in kept:
        assert path.exists(), path
    assert agent.stop() == 0
