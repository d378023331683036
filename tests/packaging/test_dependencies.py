"""Each package bundles exactly what its program imports (issue 9, item 1).

scripts/package bundles, into mesh-agent and mesh-registrar, the lists in
pyproject.toml's extras ``agent`` and ``registrar``; each package ships its
program's code plus ``meshcore``. Here every import in that code, at module
level or inside a function (lazy imports run too, later), is read with
``ast`` and mapped to the distribution that provides it in the dev venv:
every third-party module must come from the program's own list, and every
entry in the list must be imported. Fast set: reads source and metadata only.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.packaging.build import REPO

PROJECT = ("agent", "registrar", "meshcore")
SHIPPED = {"agent": ("agent", "meshcore"), "registrar": ("registrar", "meshcore")}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_list(program: str) -> set[str]:
    """Distribution names in the program's extra (what scripts/package bundles)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"][program]
    names = set()
    for requirement in extras:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(normalize(match.group(0)))
    return names


def _imports_in(source: str, path: str) -> set[str]:
    """Top-level module names a file may ever import (any depth, any branch)."""
    tree = ast.parse(source, path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic:
                arg = node.args[0] if node.args else None
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                    f"{path}:{node.lineno}: a dynamic import this check cannot read")
                found.add(arg.value.split(".")[0])
    return found


def third_party_imports(program: str, root: Path = REPO) -> dict[str, set[str]]:
    """Third-party top-level module -> files of the shipped code that import it."""
    found: dict[str, set[str]] = {}
    for package in SHIPPED[program]:
        for path in sorted((root / package).rglob("*.py")):
            rel = str(path.relative_to(root))
            for module in _imports_in(path.read_text(encoding="utf-8"), rel):
                if module in sys.stdlib_module_names or module in PROJECT:
                    continue
                found.setdefault(module, set()).add(rel)
    return found


def providers() -> dict[str, set[str]]:
    """Top-level module -> normalized names of the installed distributions providing it."""
    return {module: {normalize(d) for d in dists}
            for module, dists in importlib.metadata.packages_distributions().items()}


def closure_problems(program: str, declared: set[str], root: Path = REPO) -> list[str]:
    imported = third_party_imports(program, root)
    provided_by = providers()
    problems = []
    used: set[str] = set()
    for module, files in sorted(imported.items()):
        dists = provided_by.get(module, set())
        if not dists:
            problems.append(f"{module} (imported by {sorted(files)[0]}) is not installed: "
                            "no distribution provides it")
        elif not dists & declared:
            problems.append(f"{module} (imported by {sorted(files)[0]}) comes from "
                            f"{sorted(dists)}, not in the {program} list")
        used |= dists & declared
    problems += [f"{dist} is in the {program} list but nothing imports it"
                 for dist in sorted(declared - used)]
    return problems


@pytest.mark.parametrize("program", ["agent", "registrar"])
def test_each_list_is_exactly_what_the_program_imports(program: str) -> None:
    assert closure_problems(program, dependency_list(program)) == []


def test_the_agent_list_has_no_registrar_only_dependency() -> None:
    agent = dependency_list("agent")
    for registrar_only in ("aiohttp", "uvloop", "pyjwt", "asn1crypto"):
        assert registrar_only not in agent


def test_a_lazy_import_missing_from_the_list_is_caught(tmp_path: Path) -> None:
    # A function-level import (run only when called) counts like a module-level one.
    for package in SHIPPED["agent"]:
        shutil.copytree(REPO / package, tmp_path / package)
    planted = tmp_path / "agent" / "cli.py"
    planted.write_text(planted.read_text() + "\n\ndef _serve() -> None:\n    import aiohttp.web\n")
    problems = closure_problems("agent", dependency_list("agent"), tmp_path)
    assert problems == ["aiohttp (imported by agent/cli.py) comes from ['aiohttp'], "
                        "not in the agent list"]


def test_a_dynamic_import_is_read_or_refused() -> None:
    assert _imports_in("import importlib\nimportlib.import_module('uvloop')\n", "x.py") == {
        "importlib", "uvloop"}
    with pytest.raises(AssertionError, match="dynamic import"):
        _imports_in("import importlib\nname = 'x'\nimportlib.import_module(name)\n", "x.py")


def test_an_unused_entry_is_caught() -> None:
    problems = closure_problems("registrar", dependency_list("registrar") | {"psutil"})
    assert "psutil is in the registrar list but nothing imports it" in problems


@pytest.mark.parametrize("program", ["agent", "registrar"])
def test_deb_depends_on_python3_systemd_only_if_the_program_uses_it(program: str) -> None:
    # systemd-python is the one list entry not bundled on deb (python3-systemd).
    spec = yaml.safe_load((REPO / "packaging" / f"mesh-{program}.yaml").read_text())
    depends = spec["overrides"]["deb"]["depends"]
    assert ("python3-systemd" in depends) == ("systemd-python" in dependency_list(program))
