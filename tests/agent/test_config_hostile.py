"""Hostile or careless config files: each is a ConfigError (exit 78) that names
the file and the line or key, quickly, in one short line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config

BASE = "registrar:\n  url: https://registrar.example:8443\n"

# "Billion laughs": 9 levels of 9 aliases, under 1 KB, expanding to 9**9 items.
BOMB = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True))


def write(tmp_path: Path, body: bytes | str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return path


@pytest.mark.parametrize(("body", "where", "problem"), [
    pytest.param(BASE + BOMB, "line 4", "aliases", id="alias-bomb"),
    pytest.param(BASE + "x: &one 5\ny: *one\n", "line 4", "aliases", id="single-alias"),
    pytest.param(BASE + "rotation:\n  renew_at: 0.5\n  renew_at: 0.6\n", "line 5",
                 "duplicate key 'renew_at'", id="duplicate-nested"),
    pytest.param(BASE + "log_level: info\nlog_level: debug\n", "line 4",
                 "duplicate key 'log_level'", id="duplicate-top"),
    pytest.param(BASE.encode() + b"log_level: \"de\xffbug\"\n", "line 3", "not UTF-8",
                 id="not-utf8"),
])
def test_refused_yaml_names_file_and_line(tmp_path: Path, body: str | bytes, where: str,
                                          problem: str) -> None:
    path = write(tmp_path, body)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - started < 2
    assert info.value.file == str(path)
    assert info.value.key == where
    assert problem in info.value.problem


def test_a_duplicate_key_in_a_dropin_names_the_dropin(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "agent.d").mkdir()
    dropin = write(tmp_path / "agent.d", "log_level: info\nlog_level: debug\n", "10-x.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(dropin) and info.value.key == "line 2"


@pytest.mark.parametrize("body", [
    BASE + "log_level: " + "x" * 300_000 + "\n",
    BASE + "rotation:\n  jitter: '" + "9" * 100_000 + "'\n",
    BASE + "capture:\n  exclude_interfaces: ['" + "e" * 100_000 + "']\n",
])
def test_errors_quote_at_most_80_characters_of_a_value(tmp_path: Path, body: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, body))
    assert len(str(info.value)) < 600 + len(str(tmp_path))
    assert "\u2026" in str(info.value)


def test_a_huge_value_gives_one_short_line_and_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "log_level: " + "x" * 300_000 + "\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert "log_level" in proc.stderr and str(path) in proc.stderr
    assert len(proc.stderr) < 2000


def test_alias_bomb_through_the_daemon_exits_78_fast(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + BOMB)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert "aliases" in proc.stderr and str(path) in proc.stderr
    assert time.monotonic() - started < 20
