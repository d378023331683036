"""The HTTPS API of docs/api/openapi.yaml: limits, handlers, metrics."""
