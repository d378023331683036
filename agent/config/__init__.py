"""Agent configuration: loading, merging drop-ins, validation."""

from agent.config.errors import EX_CONFIG, ConfigError
from agent.config.model import AgentConfig, load_config

__all__ = ["EX_CONFIG", "AgentConfig", "ConfigError", "load_config"]
