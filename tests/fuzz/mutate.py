"""Structure-aware mutation: most of what the targets read is JSON, YAML or
PEM, and a byte flip almost always makes it unparseable, so libFuzzer alone
rarely gets past the first parser. These mutators parse the input, change one
node of the tree (a hostile value, a wrong type, a dropped or borrowed key, a
byte mutation of the DER inside a base64 string or PEM block) and write it
back; a share of the time, or when the input does not parse, they leave it to
libFuzzer's own byte mutation (``atheris.Mutate``)."""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
from collections.abc import Callable
from typing import Any

import yaml

# Byte-level mutation (libFuzzer's); injected so this module imports without atheris.
ByteMutator = Callable[[bytes, int], bytes]

_HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**63, -(2**63), float("inf"), float("nan"), "", "\ud800",
    "x" * 3000, [], {}, [None], {"": None}, "0", "-1", "true", "null", "1e400", "\x00",
    "g00000001", "../../etc", "2026-12-01T10:00:00+00:00", "25:99", "1s", "-5m",
]
# Spliced in as text: values json.dumps cannot write or would write differently.
_RAW = ["1e400", "-1e400", "1" * 5000, "[" * 3000 + "]" * 3000, '"\\udfff"', "NaN", "-0"]
_PEM = re.compile(rb"(-----BEGIN [A-Z0-9 ]+-----\n)(.*?)(\n-----END [A-Z0-9 ]+-----)", re.S)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, sub in value.items():
            out += _nodes(sub, (*path, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out += _nodes(sub, (*path, i))
    return out


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate_bytes(data: bytes, rng: random.Random, mutate: ByteMutator) -> bytes:
    return mutate(data, max(len(data) * 2, 16))


def _mutate_string(text: str, rng: random.Random, mutate: ByteMutator) -> str:
    compact = "".join(text.split())
    if len(compact) >= 16:
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:  # base64: mutate what it encodes (a PKCS#7, a document), keep it base64
            return base64.b64encode(_mutate_bytes(raw, rng, mutate)).decode()
    if text.count(".") == 2 and len(text) > 40:  # a JWT: mutate one part's JSON
        parts = text.split(".")
        i = rng.randrange(3)
        padded = parts[i] + "=" * (-len(parts[i]) % 4)
        try:
            decoded = base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            decoded = b""
        changed = json_bytes(decoded, rng, mutate) if i < 2 else _mutate_bytes(
            decoded, rng, mutate)
        parts[i] = base64.urlsafe_b64encode(changed).rstrip(b"=").decode()
        return ".".join(parts)
    return _mutate_bytes(text.encode("utf-8", "surrogatepass"), rng, mutate).decode(
        "utf-8", "replace")


def tree(value: Any, rng: random.Random, mutate: ByteMutator) -> Any:
    """``value`` with one node changed (a new object; ``value`` is not touched)."""
    value = json.loads(json.dumps(value))  # a private copy
    paths = _nodes(value)
    path = rng.choice(paths)
    node = _get(value, path)
    choice = rng.random()
    if isinstance(node, str) and choice < 0.5:
        new: Any = _mutate_string(node, rng, mutate)
    elif isinstance(node, dict) and node and choice < 0.3:
        del node[rng.choice(list(node))]
        return value
    elif isinstance(node, dict) and choice < 0.5:
        donor = rng.choice([p for p in paths if p and isinstance(p[-1], str)] or [("k",)])
        node[donor[-1]] = rng.choice(_HOSTILE)
        return value
    elif choice < 0.6 and len(paths) > 1:
        new = _get(value, rng.choice(paths))  # another node's value: wrong type, or self
        new = json.loads(json.dumps(new))
    elif choice < 0.7:
        new = [node] if rng.random() < 0.5 else {"x": node}
    else:
        new = rng.choice(_HOSTILE)
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


def json_bytes(data: bytes, rng: random.Random, mutate: ByteMutator) -> bytes:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return _mutate_bytes(data, rng, mutate)
    text = json.dumps(tree(value, rng, mutate), ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.1:  # a literal json.dumps would never write
        text = text.replace("null", rng.choice(_RAW), 1)
    return text.encode("utf-8", "surrogatepass")


def yaml_bytes(data: bytes, rng: random.Random, mutate: ByteMutator) -> bytes:
    try:
        value = yaml.safe_load(data)
        json.dumps(value)  # dates and the like: leave those to byte mutation
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return _mutate_bytes(data, rng, mutate)
    return yaml.safe_dump(tree(value, rng, mutate), allow_unicode=True).encode(
        "utf-8", "surrogatepass")


def pem_bytes(data: bytes, rng: random.Random, mutate: ByteMutator) -> bytes:
    """Mutate the DER inside one PEM block (or the bytes, if there is none)."""
    blocks = list(_PEM.finditer(data))
    if not blocks:
        return _mutate_bytes(data, rng, mutate)
    block = rng.choice(blocks)
    try:
        der = base64.b64decode(b"".join(block.group(2).split()))
    except (binascii.Error, ValueError):
        return _mutate_bytes(data, rng, mutate)
    body = base64.encodebytes(_mutate_bytes(der, rng, mutate)).rstrip(b"\n")
    return data[:block.start(2)] + body + data[block.end(2):]


def structured(kind: Callable[[bytes, random.Random, ByteMutator], bytes],
               mutate: ByteMutator) -> Callable[[bytes, int, int], bytes]:
    """An atheris ``custom_mutator``: ``kind`` most of the time, plain bytes else."""
    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.25:
            return mutate(data, max_size)
        return kind(data, rng, mutate)[:max_size]
    return mutator
