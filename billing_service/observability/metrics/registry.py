"""Where a process's metrics live and how Prometheus reads them.

Each process keeps its metrics in a ``CollectorRegistry`` of its own and serves it on a port
of its own (:func:`serve_metrics`): the gRPC server on ``BILLING_METRICS_PORT``, the webhook
sidecar on ``BILLING_WEBHOOK_METRICS_PORT`` (0 = not served). Every metric group
(:class:`MetricGroup`) registers its families in the registry it is given, so groups
combined in one process share one registry and one endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["LATENCY_BUCKETS", "MetricGroup", "MetricsServer", "serve_metrics"]

#: Histogram buckets (seconds) for calls answered within milliseconds to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricGroup:
    """The base of every metric group: owns (or joins) the registry its metrics live in.

    Groups are cooperative: a subclass calls ``super().__init__(registry)`` first, then
    registers its metrics in ``self.registry``, so a class combining several groups (such
    as ``BillingMetrics``) registers all of them in one registry.

    Args:
        registry: Where the metrics live; a fresh registry when None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (prometheus-client's threaded server)."""

    host: str
    port: int
    _server: Any

    @property
    def url(self) -> str:
        """Where to scrape."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stops serving."""
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(registry: CollectorRegistry, *, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0 picks a free one) in a daemon thread."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    return MetricsServer(host, bound, server)
