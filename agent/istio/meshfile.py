"""``mesh.yaml``: the ``defaultConfig`` (Istio's ProxyConfig) istioctl writes.

We read what the VM needs: ``discoveryAddress`` (istiod's XDS address, Istio's
default ``istiod.istio-system.svc:15012``) and ``proxyMetadata`` (a map of
strings that pilot-agent turns into environment, so ``ISTIO_META_*`` entries
become node metadata). Other ProxyConfig fields are kept as read and not
interpreted. Errors carry the YAML line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.istio.address import Address, parse_address
from agent.istio.errors import file_error
from meshcore.config.errors import ConfigError

DEFAULT_DISCOVERY = "istiod.istio-system.svc:15012"


@dataclass(frozen=True)
class MeshFile:
    discovery: Address
    proxy_metadata: Mapping[str, str]
    lines: Mapping[str, int] = field(default_factory=dict)  # proxyMetadata name -> line
    default_config: Mapping[str, Any] = field(default_factory=dict)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _entries(node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            out[str(key.value)] = (key, value)
    return out


def parse_mesh(text: str, path: Path) -> MeshFile:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise file_error(path, line, "yaml", str(exc.problem or exc.context),
                         "valid YAML") from None
    except yaml.YAMLError as exc:
        raise file_error(path, 1, "yaml", str(exc), "valid YAML") from None
    if root is None:
        raise file_error(path, 1, "defaultConfig", "the file is empty",
                         "a mapping with defaultConfig, as istioctl writes it")
    if not isinstance(root, yaml.MappingNode):
        raise file_error(path, _line(root), "defaultConfig", "the document is not a mapping",
                         "a mapping with defaultConfig")
    top = _entries(root)
    if "defaultConfig" not in top:
        raise file_error(path, _line(root), "defaultConfig", "is missing",
                         "defaultConfig: {discoveryAddress: ..., proxyMetadata: ...}")
    key, config = top["defaultConfig"]
    if not isinstance(config, yaml.MappingNode):
        raise file_error(path, _line(key), "defaultConfig", "is not a mapping",
                         "discoveryAddress, proxyMetadata, ...")
    fields = _entries(config)
    discovery = DEFAULT_DISCOVERY
    line = _line(config)
    if "discoveryAddress" in fields:
        node = fields["discoveryAddress"][1]
        line = _line(node)
        if not isinstance(node, yaml.ScalarNode) or not isinstance(
                data["defaultConfig"]["discoveryAddress"], str):
            raise file_error(path, line, "defaultConfig.discoveryAddress", "is not a string",
                             "HOST:PORT, e.g. istiod.istio-system.svc:15012")
        discovery = str(node.value)
    address = parse_address(discovery, path, line, "defaultConfig.discoveryAddress")
    metadata: dict[str, str] = {}
    lines: dict[str, int] = {}
    if "proxyMetadata" in fields:
        mkey, mnode = fields["proxyMetadata"]
        if isinstance(mnode, yaml.ScalarNode) and mnode.tag.endswith(":null"):
            mnode = yaml.MappingNode("tag:yaml.org,2002:map", [])
        if not isinstance(mnode, yaml.MappingNode):
            raise file_error(path, _line(mkey), "defaultConfig.proxyMetadata", "is not a mapping",
                             "NAME: value strings")
        raw = data["defaultConfig"]["proxyMetadata"] or {}
        for name, (_, vnode) in _entries(mnode).items():
            value = raw.get(name)
            if not isinstance(value, str):
                raise file_error(path, _line(vnode), f"defaultConfig.proxyMetadata.{name}",
                                 f"is {value!r}, not a string",
                                 'a quoted string, e.g. "true"')
            metadata[name] = value
            lines[name] = _line(vnode)
    return MeshFile(discovery=address, proxy_metadata=metadata, lines=lines,
                    default_config=dict(data["defaultConfig"]))


def read_mesh(path: Path) -> MeshFile:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(path, 1, "file", "is not UTF-8 text", "YAML") from None
    except OSError as exc:
        raise ConfigError(str(path), "file", f"cannot read it ({exc.strerror})",
                          "the mesh.yaml istioctl wrote") from None
    return parse_mesh(text, path)
