"""Reads agent.yaml and its drop-ins, merges them in name order and remembers
which file every key came from, so an error can name the file that set it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode

from meshcore.config.errors import ConfigError, shown


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses but that a config file must not use."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases and without duplicate keys.

    An alias lets a kilobyte of YAML expand into gigabytes (a "billion laughs"
    bomb), and no config here needs one. A duplicate key would silently let the
    later value win, hiding the earlier one from whoever reads the file.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(problem="YAML aliases (*name) are not allowed in a config file",
                           problem_mark=event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode):
                if key_node.value in seen:
                    raise _Refused(problem=f"duplicate key {shown(key_node.value)}",
                                   problem_mark=key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


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
            # "groups[0].name" -> "groups[0]" -> "groups": a list item was set by
            # the file that set the list.
            key = key.rpartition("[")[0] if key.endswith("]") else key.rpartition(".")[0]
        return self.default_file


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "-", "file does not exist") from exc
    except OSError as exc:
        raise ConfigError(str(path), "-", f"cannot read file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(str(path), f"line {line}", f"not UTF-8 text (byte {exc.start})",
                          "a UTF-8 encoded YAML file") from exc
    try:
        loaded = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "-"
        raise ConfigError(str(path), where, str(exc.problem), "plain YAML, each key once") \
            from None
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
        _check_key(key, file, prefix)
        dotted = f"{prefix}{key}"
        _check_keys(value, file, dotted)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origins, file, f"{dotted}.")
        else:
            into[key] = _deepcopy(value)
            for stale in [k for k in origins if k.startswith(f"{dotted}.")]:
                del origins[stale]
            origins[dotted] = file
            if isinstance(value, dict):
                _record(value, origins, file, f"{dotted}.")


def _check_key(key: object, file: str, prefix: str) -> None:
    # An empty key was reported as "FILE: : unknown key" against the main file
    # (found by tests/fuzz, agent_config); a number beside a string key could not
    # even be sorted for that message.
    if not isinstance(key, str) or not key:
        raise ConfigError(file, f"{prefix}{shown(key)}", "is not a key name",
                          "non-empty text keys")


def _check_keys(value: Any, file: str, dotted: str) -> None:
    """Every key at any depth of ``value`` (in lists too) is a non-empty string."""
    if isinstance(value, dict):
        for key, sub in value.items():
            _check_key(key, file, f"{dotted}.")
            _check_keys(sub, file, f"{dotted}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_keys(item, file, f"{dotted}[{index}]")


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
