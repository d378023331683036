"""Shared fixtures live in tests/fixtures/ modules; this file only wires them."""

from tests.fixtures.agent import agent_factory
from tests.fixtures.postgres import postgres_server
from tests.fixtures.registrar import registrar_factory, registrar_store

__all__ = ["agent_factory", "postgres_server", "registrar_factory", "registrar_store"]
