"""Istio's CA API (``istio.v1.auth.IstioCertificateService/CreateCertificate``) on
the registrar, so Istio's own pilot-agent can use mesh-registrar as its CA."""
