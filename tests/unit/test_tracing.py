"""Tracing is switched on by the standard OTEL_* variables only."""

from __future__ import annotations

from billing_service.observability import tracing


def test_off_unless_an_exporter_is_asked_for() -> None:
    assert not tracing.tracing_requested({})
    assert not tracing.tracing_requested({"OTEL_SERVICE_NAME": "billing"})
    assert not tracing.tracing_requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not tracing.tracing_requested({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.tracing_requested({"OTEL_TRACES_EXPORTER": "console"})


def test_off_costs_nothing() -> None:
    assert tracing.configure_tracing({}, service_name="t") == []
    assert not tracing.enabled()
    # One shared no-op context manager: no allocation, no OpenTelemetry import per call.
    assert tracing.processor_span("fake", "create_payment") is tracing.processor_span("stripe", "get_payment")
    with tracing.processor_span("fake", "create_payment"):
        pass
