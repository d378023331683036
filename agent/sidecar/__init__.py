"""The Envoy sidecar: render its bootstrap, run and supervise it."""
