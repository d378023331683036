"""What the agent reports: health model, Prometheus metrics, local HTTP endpoint."""
