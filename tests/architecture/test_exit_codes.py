"""Exit codes live in meshcore.exits alone: the agent never writes 78 or 79 as
a number (systemd's RestartPreventExitStatus= depends on them meaning one thing)."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
RESERVED = {78, 79}


def literal_exit_codes(source: str) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and type(node.value) is int
            and node.value in RESERVED]


def test_the_agent_names_its_exit_codes() -> None:
    found = {str(path.relative_to(AGENT.parent)): lines for path in sorted(AGENT.rglob("*.py"))
             if (lines := literal_exit_codes(path.read_text()))}
    assert found == {}, f"use meshcore.exits, not literal 78/79: {found}"


def test_the_check_sees_a_literal() -> None:
    assert literal_exit_codes("def f() -> int:\n    return 78\n") == [2]
