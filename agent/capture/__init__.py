"""Traffic capture: plan iptables/nftables redirection, apply, verify, remove."""

# agent.config.model imports agent.capture.config; loading the config package
# first lets either package be imported first without a circular-import error.
import agent.config  # noqa: F401
