"""Exports of the registrar's catalog for other control planes (Istio first)."""
