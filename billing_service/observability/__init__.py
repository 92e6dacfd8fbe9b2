"""Observability: Prometheus metrics, structured JSON logs with PCI redaction, tracing.

- ``metrics``: per-process registries, the gRPC metrics interceptor, payment KPIs from
  audit events, the webhook metrics API and the ``/metrics`` endpoint;
- ``processor``: ``InstrumentedProcessor``, the metered ``PaymentProcessor`` wrapper;
- ``logging``: JSON log lines and the redaction filter on the root handler;
- ``context``: the request id and caller being served (set by entrypoints, read by logs);
- ``tracing``: OpenTelemetry, on only when the ``OTEL_*`` variables ask for it.
"""
