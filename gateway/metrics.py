"""Prometheus metrics: one registry per app (no process globals), names in base units.

Label values are bounded: `route` is the route's pattern from the config (or "-" for an
unrouted path), never the request path, so a scan of random URLs cannot explode the series.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "x402_gateway_requests", "Requests answered", ["route", "method", "status"], registry=r
        )
        self.payments = Counter(
            "x402_gateway_payments",
            "Payment outcomes: verified, settled, settle_failed, replayed, invalid, ...",
            ["outcome", "reason"],
            registry=r,
        )
        self.revenue = Counter(
            "x402_gateway_revenue_atomic_units",
            "Settled revenue in the asset's atomic units",
            ["asset", "network", "route"],
            registry=r,
        )
        self.verify_seconds = Histogram(
            "x402_gateway_verify_seconds", "Facilitator verify time", buckets=_SLOW, registry=r
        )
        self.settle_seconds = Histogram(
            "x402_gateway_settle_seconds", "Facilitator settle time", buckets=_SLOW, registry=r
        )
        self.origin_seconds = Histogram(
            "x402_gateway_origin_ttfb_seconds",
            "Origin time to response head",
            buckets=_FAST,
            registry=r,
        )
        self.request_seconds = Histogram(
            "x402_gateway_request_duration_seconds",
            "Time to the response head, per route kind",
            ["kind"],
            buckets=_FAST,
            registry=r,
        )
        self.dependency_errors = Counter(
            "x402_gateway_dependency_errors",
            "Facilitator, store and origin failures",
            ["dependency", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "x402_gateway_in_flight_requests", "Requests being handled", registry=r
        )
        self.config_generation = Gauge(
            "x402_gateway_config_generation", "Generation of the loaded config", registry=r
        )
        self.config_reload_failures = Counter(
            "x402_gateway_config_reload_failures", "Config reloads rejected", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
