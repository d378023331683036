"""Talks to mesh-registrar: attest with evidence, renew over mTLS, fetch the bundle."""

from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.errors import RegistrarError
from agent.registrar_client.wire import Issued

__all__ = ["Issued", "RegistrarClient", "RegistrarError"]
