"""OpenTelemetry tracing for gRPC, Mongo and processor calls, switched on by ``OTEL_*``.

Tracing is on when the standard variables ask for an exporter: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``; ``none`` switches it off) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` wins over both. The
SDK reads the rest itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_PROTOCOL``, sampling, batching).

When it is off nothing from OpenTelemetry is imported: :func:`processor_span` hands back
one shared no-op context manager and no interceptor is installed, so off costs nothing.
The packages come with the optional extra ``pip install -e '.[otel]'``; if they are
missing while the variables ask for tracing, a warning is logged and tracing stays off.

What is traced:
- gRPC server calls: the ``opentelemetry-instrumentation-grpc`` aio server interceptor
  (returned by :func:`configure_tracing` for the server's interceptor list);
- Mongo commands: ``opentelemetry-instrumentation-pymongo`` (a global command listener,
  so call :func:`configure_tracing` before any client is created);
- processor calls: one ``processor.<operation>`` span each, from ``InstrumentedProcessor``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["configure_tracing", "enabled", "processor_span", "tracing_requested"]

log = logging.getLogger(__name__)

_tracer: Any = None  # an opentelemetry Tracer once configured
_NOOP: AbstractContextManager[None] = contextlib.nullcontext()


def tracing_requested(env: Mapping[str, str]) -> bool:
    """True when the standard ``OTEL_*`` variables ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(
        exporters
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def enabled() -> bool:
    """True once :func:`configure_tracing` switched tracing on in this process."""
    return _tracer is not None


def _exporters(env: Mapping[str, str]) -> list[Any]:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()] or ["otlp"]
    out: list[Any] = []
    for name in names:
        if name == "console":
            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
            if protocol.strip() == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter as GrpcExporter,
                )

                out.append(GrpcExporter())
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                out.append(OTLPSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER entry ignored", extra={"exporter": name})
    return out


def configure_tracing(env: Mapping[str, str], *, service_name: str) -> list[Any]:
    """Switches tracing on when the environment asks for it.

    Args:
        env: The process environment.
        service_name: Used when ``OTEL_SERVICE_NAME`` is not set.

    Returns:
        gRPC aio server interceptors to install (empty when tracing is off).
    """
    global _tracer  # noqa: PLW0603 - one tracer per process, set once at start
    if not tracing_requested(env):
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for tracing but the packages are missing; install the 'otel' extra")
        return []
    from billing_service.observability import logging as json_logging

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    for exporter in _exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    PymongoInstrumentor().instrument()
    _tracer = trace.get_tracer("billing_service")

    def current_trace_id() -> str:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    json_logging.trace_id_provider = current_trace_id
    log.info("tracing on", extra={"service_name": resource.attributes.get("service.name")})
    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _span(processor: str, operation: str) -> Iterator[None]:
    with _tracer.start_as_current_span(
        f"processor.{operation}",
        kind=_client_kind(),
        attributes={"billing.processor": processor, "billing.processor.operation": operation},
    ):
        yield


def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def processor_span(processor: str, operation: str) -> AbstractContextManager[None]:
    """A span around one processor call, or a shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _span(processor, operation)
