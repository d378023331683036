"""SIGHUP's table: every part of the config is either applied or rejected, so
a new section cannot be ignored silently (the daemon itself is tested in
tests/integration/test_misconfig.py)."""

from __future__ import annotations

import dataclasses

from agent.config.model import AgentConfig
from agent.daemon.app import RELOAD_APPLIES, RELOAD_REJECTS, config_field, reload_summary


def test_every_config_field_has_a_sighup_decision() -> None:
    decided = [config_field(name) for name in (*RELOAD_APPLIES, *RELOAD_REJECTS)]
    assert len(decided) == len(set(decided))
    # warnings are findings about the files, not settings: logged again on every reload.
    fields = {f.name for f in dataclasses.fields(AgentConfig)} - {"source_file", "warnings"}
    assert set(decided) == fields


def test_the_answer_names_each_section() -> None:
    assert reload_summary(["log_level"], ["attestation"]) == (
        "applied log_level; rejected attestation: needs a restart")
    assert reload_summary([], ["sidecar", "capture"]) == (
        "rejected sidecar, capture: need a restart")
    assert reload_summary(["rotation"], []) == "applied rotation"
    assert reload_summary([], []) == "no change"
