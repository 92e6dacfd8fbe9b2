"""Observability: Prometheus metrics, structured JSON logs with PCI redaction, tracing.

- ``metrics``: a package, one module per job: per-process registries and the ``/metrics``
  endpoint, the gRPC metrics interceptor, processor calls, payment KPIs from audit events,
  subscription gauges, reconciliation and drift, the webhook metrics API;
- ``processor``: ``InstrumentedProcessor``, the metered ``PaymentProcessor`` wrapper;
- ``logging``: JSON log lines and the redaction filter on the root handler;
- ``context``: the request id and caller being served (set by entrypoints, read by logs);
- ``tracing``: OpenTelemetry, on only when the ``OTEL_*`` variables ask for it.
"""
