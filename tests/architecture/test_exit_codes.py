"""Exit codes live in meshcore.exits alone, each with one meaning and its own
documentation: the agent never writes a sysexits code (65, 69, 78, 79) as a
number (systemd's RestartPreventExitStatus= and operators' scripts depend on
each meaning one thing), and 1 stays reserved for bugs."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from meshcore import exits

AGENT = Path(__file__).resolve().parents[2] / "agent"
EXITS = Path(exits.__file__)


def named_codes() -> dict[str, int]:
    return {name: value for name, value in vars(exits).items()
            if name.startswith("EX_") and type(value) is int}


RESERVED = {value for value in named_codes().values() if value >= 64}


def literal_exit_codes(source: str, reserved: set[int] = RESERVED) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and type(node.value) is int
            and node.value in reserved]


def documented_codes(source: str) -> set[str]:
    """Names of module-level constants followed directly by a docstring."""
    body = ast.parse(source).body
    return {node.target.id for node, after in itertools.pairwise(body)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)}


def test_the_agent_names_its_exit_codes() -> None:
    assert {65, 69, 78, 79} <= RESERVED
    found = {str(path.relative_to(AGENT.parent)): lines for path in sorted(AGENT.rglob("*.py"))
             if (lines := literal_exit_codes(path.read_text()))}
    assert found == {}, f"use meshcore.exits, not literal exit codes: {found}"


def test_the_check_sees_a_literal() -> None:
    assert literal_exit_codes("def f() -> int:\n    return 78\n") == [2]
    assert literal_exit_codes("def f() -> int:\n    return 69\n") == [2]


def test_each_code_has_one_meaning_and_says_what_it_means() -> None:
    codes = named_codes()
    values = sorted(codes.values())
    assert len(values) == len(set(values)), f"two names for one exit code: {codes}"
    undocumented = set(codes) - documented_codes(EXITS.read_text()) - {"EX_OK"}
    assert undocumented == set(), f"exit codes without a docstring: {sorted(undocumented)}"


def test_the_documentation_check_sees_a_bare_code() -> None:
    assert documented_codes('A: int = 1\n"""doc"""\nB: int = 2\n') == {"A"}
