"""Every seed, crashers found by fuzzing included, through its target's
``check``: the regression test of each bug the fuzzer found, and proof the
targets still accept what they are meant to."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.fuzz.run import TARGETS

SEEDS = Path(__file__).parent / "seeds"
CASES = [(target, path) for target in TARGETS
         for path in sorted((SEEDS / target).iterdir())]


@pytest.mark.parametrize(("target", "seed"), CASES,
                         ids=[f"{t}/{p.name}" for t, p in CASES])
def test_seed(target: str, seed: Path) -> None:
    module = importlib.import_module(f"tests.fuzz.{target}")
    module.check(seed.read_bytes())


def test_every_target_has_seeds() -> None:
    for target in TARGETS:
        assert len(list((SEEDS / target).iterdir())) >= 4, target
