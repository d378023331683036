"""The Envoy sidecar: render its bootstrap, hand it certificates, run and supervise it.

The daemon uses ``agent.sidecar.service.Sidecar`` (see that module for the
order of calls). This package imports nothing on its own, so reading the
sidecar's config section does not load the supervisor.
"""
