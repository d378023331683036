"""Verifiers: check attestation evidence and say what it proves."""
