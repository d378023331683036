"""The proxy the data plane sends traffic through: who it runs as and which
ports it serves. One ``proxy:`` section read by both the sidecar (which runs
that proxy) and capture (which redirects to its ports and exempts its user)."""
