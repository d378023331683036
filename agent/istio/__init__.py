"""Istio mode: istioctl's VM files, istiod's CA, and Envoy configured by istiod."""
