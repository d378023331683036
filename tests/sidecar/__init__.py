# agent.config must load before agent.sidecar.config (model.py imports the section
# parsers, which import the reader through the agent.config package).
import agent.config  # noqa: F401
