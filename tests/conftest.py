"""Shared fixtures live in tests/fixtures/ modules; this file only wires them."""

from tests.fixtures.agent import agent_factory
from tests.fixtures.registrar import registrar_factory

__all__ = ["agent_factory", "registrar_factory"]
