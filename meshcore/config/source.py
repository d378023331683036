"""Reads agent.yaml and its drop-ins, merges them in name order and remembers
which file every key came from, so an error can name the file that set it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshcore.config.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """Merged configuration data plus the origin file of each dotted key."""

    data: Mapping[str, Any]
    origins: Mapping[str, str]
    default_file: str

    def origin(self, dotted: str) -> str:
        """The file that set ``dotted`` (or the closest parent), else the main file."""
        key = dotted
        while key:
            if key in self.origins:
                return self.origins[key]
            key = key.rpartition(".")[0]
        return self.default_file


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "-", "file does not exist") from exc
    except OSError as exc:
        raise ConfigError(str(path), "-", f"cannot read file: {exc.strerror}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "-"
        raise ConfigError(str(path), where, "not valid YAML", "a YAML mapping") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(str(path), "-", f"top level is a {type(loaded).__name__}", "a mapping")
    return loaded


def _merge(
    into: dict[str, Any], new: Mapping[str, Any], origins: dict[str, str], file: str, prefix: str
) -> None:
    for key, value in new.items():
        if not isinstance(key, str):
            raise ConfigError(file, f"{prefix}{key!r}", "keys must be strings")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origins, file, f"{dotted}.")
        else:
            into[key] = _deepcopy(value)
            for stale in [k for k in origins if k.startswith(f"{dotted}.")]:
                del origins[stale]
            origins[dotted] = file
            if isinstance(value, dict):
                _record(value, origins, file, f"{dotted}.")


def _record(value: Mapping[str, Any], origins: dict[str, str], file: str, prefix: str) -> None:
    for key, sub in value.items():
        origins[f"{prefix}{key}"] = file
        if isinstance(sub, dict):
            _record(sub, origins, file, f"{prefix}{key}.")


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def dropin_dir_for(main: Path) -> Path:
    """``/etc/mesh-agent/agent.yaml`` -> ``/etc/mesh-agent/agent.d``."""
    return main.with_name(main.stem + ".d")


def load_source(main: Path, *, require_main: bool = True) -> Source:
    """Load ``main`` then every ``*.yaml`` in its ``.d`` directory, in name order.

    A missing main file is allowed when ``require_main`` is false (cloud-init may
    provide everything as drop-ins).
    """
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if main.exists() or require_main:
        _merge(data, _read_yaml(main), origins, str(main), "")
    dropins = dropin_dir_for(main)
    if dropins.is_dir():
        for path in sorted(dropins.glob("*.yaml")):
            _merge(data, _read_yaml(path), origins, str(path), "")
    return Source(data=data, origins=origins, default_file=str(main))
