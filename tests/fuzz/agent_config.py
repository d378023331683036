"""Target ``agent_config``: agent.yaml and one drop-in, through the meshcore
config reader and the agent's config model (``agent.config.load_config``).

The input is the main file; if it holds the line ``#--- agent.d/50-fuzz.yaml``,
what follows is a drop-in instead. Allowed: an ``AgentConfig`` or a
``ConfigError`` that names a file and a key (``mesh-agent`` exits 78 on it);
anything else is a crash that exit code 1 would report as a bug. A loaded
config's control-plane URLs must parse, port included (the daemon dials them).
"""

from __future__ import annotations

import functools
import random
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import AgentConfig, load_config
from agent.config.model import control_plane_urls
from meshcore.config.errors import ConfigError
from tests.fuzz.mutate import ByteMutator, yaml_bytes

SPLIT = b"\n#--- agent.d/50-fuzz.yaml\n"


def mutate(data: bytes, rng: random.Random, byte_mutator: ByteMutator) -> bytes:
    """YAML-aware mutation of the main file or the drop-in, keeping the split."""
    head, found, tail = data.partition(SPLIT)
    if found and rng.random() < 0.5:
        return head + SPLIT + yaml_bytes(tail, rng, byte_mutator)
    return yaml_bytes(head, rng, byte_mutator) + found + tail


@functools.cache
def _dir() -> Path:
    # /dev/shm when there is one: a write per input, so keep it off the disk.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="fuzz-agent-config-", dir=base))


def check(data: bytes) -> None:
    root = _dir()
    main, dropin = root / "agent.yaml", root / "agent.d" / "50-fuzz.yaml"
    shutil.rmtree(root / "agent.d", ignore_errors=True)
    head, found, tail = data.partition(SPLIT)
    main.write_bytes(head)
    if found:
        dropin.parent.mkdir()
        dropin.write_bytes(tail)
    try:
        config = load_config(main)
    except ConfigError as exc:
        assert exc.file and exc.key and exc.problem, str(exc)
        return
    assert isinstance(config, AgentConfig)
    assert config.source_file == str(main)
    # What the daemon dials and exempts from capture must be usable as read.
    for url, _ in control_plane_urls(config):
        assert urlsplit(url).port is not None or urlsplit(url).hostname, url
