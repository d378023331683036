"""The long-running agent: wiring, systemd integration, logging, signals."""
