"""The group's readiness probe, run against the local app, and health reports."""
