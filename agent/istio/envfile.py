"""``cluster.env``: the shell variable file istioctl writes, read without a shell.

istioctl writes one ``NAME=value`` line per variable, sorted, with the value
shell-quoted (``'...'``, and a quote inside as ``'"'"'``). Istio's VM package
then sources it. We accept the quoting a POSIX shell would, as literals only:
single and double quotes, backslash escapes, blank lines, ``#`` comments and
an ``export`` prefix. Anything that would make a shell *run* something or
expand a variable (``$``, backticks, ``;``, ``|``...) is an error, because
sourcing would not give the literal value we would read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.istio.errors import file_error
from meshcore.config.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters a shell gives a meaning to when unquoted. A bare '*' (istioctl's
# "all ports") is among them: a shell would glob it, so it must be quoted.
_SPECIAL = set("$`;|&<>(){}*?[]")
_EXPECTED = "NAME='value' lines as istioctl writes them"


@dataclass(frozen=True)
class EnvValue:
    value: str
    line: int


def _word(text: str, start: int, path: Path, line: int, name: str) -> tuple[str, int]:
    """Read one shell word from ``text[start:]``: the value and the index after it."""
    out: list[str] = []
    i = start
    while i < len(text) and text[i] not in " \t":
        char = text[i]
        if char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise file_error(path, line, name, "unterminated single quote", _EXPECTED)
            out.append(text[i + 1:end])
            i = end + 1
        elif char == '"':
            i = _double_quoted(text, i + 1, out, path=path, line=line, name=name)
        elif char == "\\":
            if i + 1 >= len(text):
                raise file_error(path, line, name, "a line ending in a backslash "
                                 "(continued lines are not supported)", _EXPECTED)
            out.append(text[i + 1])
            i += 2
        elif char in _SPECIAL:
            raise file_error(path, line, name, f"unquoted {char!r} (a shell would not read "
                             "it literally)", "the value in single quotes")
        else:
            out.append(char)
            i += 1
    return "".join(out), i


def _double_quoted(text: str, i: int, out: list[str], *, path: Path, line: int,
                   name: str) -> int:
    while i < len(text):
        char = text[i]
        if char == '"':
            return i + 1
        if char in "$`":
            raise file_error(path, line, name, f"{char!r} inside double quotes (shell "
                             "expansion is not supported)", "the value in single quotes")
        if char == "\\" and i + 1 < len(text) and text[i + 1] in '"\\$`':
            out.append(text[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    raise file_error(path, line, name, "unterminated double quote", _EXPECTED)


def parse_env(text: str, path: Path) -> dict[str, EnvValue]:
    """All variables of the file; a later line for the same name wins, as in a shell."""
    values: dict[str, EnvValue] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        match = _NAME.match(line)
        if match is None or line[match.end():match.end() + 1] != "=":
            shown = line.split("=", 1)[0][:40]
            raise file_error(path, number, shown or "line", "is not a variable assignment",
                             _EXPECTED)
        name = match.group(0)
        value, end = _word(line, match.end() + 1, path, number, name)
        rest = line[end:].strip()
        if rest and not rest.startswith("#"):
            raise file_error(path, number, name, f"unexpected text after the value: "
                             f"{rest[:40]!r}", "one NAME='value' per line")
        values[name] = EnvValue(value, number)
    return values


def read_env(path: Path) -> dict[str, EnvValue]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(path, 1, "file", "is not UTF-8 text", _EXPECTED) from None
    except OSError as exc:
        raise ConfigError(str(path), "file", f"cannot read it ({exc.strerror})",
                          "the cluster.env istioctl wrote") from None
    return parse_env(text, path)
