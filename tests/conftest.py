"""Shared fixtures live in tests/fixtures/ modules; this file only wires them."""
