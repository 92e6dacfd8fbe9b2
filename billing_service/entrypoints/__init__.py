"""Entrypoints: the gRPC API and the webhook sidecar. Only these import generated code."""
