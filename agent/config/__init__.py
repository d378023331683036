"""Agent configuration: loading, merging drop-ins, validation."""

from agent.config.model import AgentConfig, load_config
from meshcore.config.errors import EX_CONFIG, ConfigError

__all__ = ["EX_CONFIG", "AgentConfig", "ConfigError", "load_config"]
