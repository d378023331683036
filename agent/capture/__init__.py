"""Traffic capture: plan iptables/nftables redirection, apply, verify, remove."""
