"""The gateway's Prometheus endpoint (`[metrics] port`), with the official prometheus-client.

Nothing is counted twice: the collector reads, at each scrape, the counters the CoAP
resources keep (server.Counters) and each relay's figures (outbox.RelayStats). The
endpoint runs on prometheus-client's own HTTP server thread, so a slow scraper never
touches the event loop.

Metrics (docs/sinks.md lists them with their meaning):
    vantrack_reports_received_total, vantrack_reports_rejected_total{reason},
    vantrack_reports_stored_total, vantrack_records_stored_total,
    vantrack_records_duplicate_total, vantrack_routes_served_total,
    vantrack_requests_rejected_total{resource,reason}, vantrack_internal_errors_total,
    vantrack_sink_up{sink,type}, vantrack_sink_delivered_total{sink},
    vantrack_sink_failures_total{sink}, vantrack_sink_pending{sink},
    vantrack_sink_oldest_pending_seconds{sink}, vantrack_sink_lag_seconds{sink}
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import MetricsConfig

if TYPE_CHECKING:
    from .outbox import Relays


class MetricsError(Exception):
    """The endpoint cannot start (its port is taken...)."""


class _Counts(Protocol):
    def snapshot(self) -> dict[str, int]: ...


class GatewayCollector(Collector):
    def __init__(self, counters: _Counts, relays: Relays | None) -> None:
        self.counters = counters
        self.relays = relays

    def collect(self) -> Iterator[Metric]:
        c = self.counters.snapshot()

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=c.get(key, 0))

        yield counter(
            "vantrack_reports_received", "CoAP requests to /r (reports)", "reports_received"
        )
        yield counter(
            "vantrack_reports_stored", "Reports stored (committed, then answered 2.04)",
            "reports_stored",
        )  # fmt: skip
        yield counter("vantrack_records_stored", "New records stored", "records_stored")
        yield counter(
            "vantrack_records_duplicate", "Records received again and ignored (already stored)",
            "records_duplicate",
        )  # fmt: skip
        yield counter("vantrack_routes_served", "Routes served to vans (GET /rt)", "routes_served")
        yield counter(
            "vantrack_internal_errors", "Requests that hit a gateway bug (answered 5.00)",
            "internal_error",
        )  # fmt: skip
        rejected = CounterMetricFamily(
            "vantrack_reports_rejected", "Reports refused, by reason", labels=["reason"]
        )
        routes = CounterMetricFamily(
            "vantrack_route_requests_rejected", "Route requests refused, by reason",
            labels=["reason"],
        )  # fmt: skip
        for key, n in sorted(c.items()):
            if key.startswith("rejected_"):
                rejected.add_metric([key.removeprefix("rejected_")], n)
            elif key.startswith("route_rejected_"):
                routes.add_metric([key.removeprefix("route_rejected_")], n)
        yield rejected
        yield routes
        yield from self._sinks()

    def _sinks(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "vantrack_sink_up",
            "1 while the sink relays, 0 once disabled (or after a crash)",
            labels=["sink", "type"],
        )
        delivered = CounterMetricFamily(
            "vantrack_sink_delivered", "Records delivered since the gateway started",
            labels=["sink"],
        )  # fmt: skip
        failures = CounterMetricFamily(
            "vantrack_sink_failures", "Failed delivery attempts since the gateway started",
            labels=["sink"],
        )  # fmt: skip
        pending = GaugeMetricFamily(
            "vantrack_sink_pending", "Records in the sink's outbox", labels=["sink"]
        )
        oldest = GaugeMetricFamily(
            "vantrack_sink_oldest_pending_seconds",
            "Age of the oldest record in the outbox (0 when empty): how far behind it is",
            labels=["sink"],
        )
        lag = GaugeMetricFamily(
            "vantrack_sink_lag_seconds",
            "Store to delivery time of the last record delivered", labels=["sink"],
        )  # fmt: skip
        now = time.time()
        for r in self.relays.relays if self.relays is not None else ():
            s = r.stats
            up.add_metric([r.name, r.cfg.type], 0 if s.disabled or s.crashed else 1)
            delivered.add_metric([r.name], s.delivered)
            failures.add_metric([r.name], s.failures)
            pending.add_metric([r.name], s.pending)
            age = 0.0 if s.oldest_pending_ms is None else now - s.oldest_pending_ms / 1000
            oldest.add_metric([r.name], max(0.0, age))
            lag.add_metric([r.name], s.lag_ms / 1000)
        yield from (up, delivered, failures, pending, oldest, lag)


class Endpoint:
    def __init__(self, server: object, port: int) -> None:
        self._server = server
        self.port = port

    def stop(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]


def start(cfg: MetricsConfig, counters: _Counts, relays: Relays | None) -> Endpoint:
    """Serve GET /metrics on cfg.bind:cfg.port (a thread); MetricsError if it cannot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(counters, relays))
    try:
        server, _thread = start_http_server(cfg.port, cfg.bind, registry)
    except OSError as e:
        raise MetricsError(
            f"cannot serve metrics on {cfg.bind}:{cfg.port}: {e.strerror or e}"
        ) from None
    return Endpoint(server, server.server_port)
