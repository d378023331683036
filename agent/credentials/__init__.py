"""Credentials on disk: generations of key + chain + bundle, swapped atomically."""

from agent.credentials.model import Credentials
from agent.credentials.store import CredentialStore, StoreError

__all__ = ["CredentialStore", "Credentials", "StoreError"]
