"""Prometheus metrics: one registry per app (no process globals), names in base units.

Label values are bounded: `route` is the route's pattern from the config (or "-" for an
unrouted path), never the request path, so a scan of random URLs cannot explode the series;
`reason` comes from the gateway's own slugs or the facilitator's (a fixed x402 vocabulary);
`facilitator` is a configured URL without its query or credentials.

Every paid request that carries a payment ends in exactly one final payment outcome
(`gateway.payment.outcome`); `verified` is counted on the way, when the facilitator accepted
it. These classes count; they build no log fields (the access line reads the same record).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.errors import (
    FacilitatorUnavailable,
    GatewayError,
    SettlementPending,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.observe.channel_metrics import ChannelMetrics
from gateway.observe.record import RequestRecord
from gateway.payment.outcome import VERIFIED

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
_TOTAL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def dependency_of(error: GatewayError) -> str | None:
    """Which dependency an error blames, for `x402_gateway_dependency_errors_total`."""
    if isinstance(error, FacilitatorUnavailable | SettlementPending):
        return "facilitator"
    if isinstance(error, StoreUnavailable):
        return "store"
    if isinstance(error, UpstreamError | UpstreamTimeout):
        return "origin"
    return None


def safe_url(url: str) -> str:
    """A URL fit for a label or a log line: scheme, host, port and path only (no
    credentials, no query string, where API keys tend to live)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _labelled(family: Counter, *values: str) -> Counter:
    return family.labels(*values)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "x402_gateway_requests",
            "Requests answered, by route pattern, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.payments = Counter(
            "x402_gateway_payments",
            "Payments by outcome: verified (on the way), then one of settled, refund_due, "
            "settle_failed, settle_pending, replayed, invalid, not_charged, error",
            ["outcome", "reason"],
            registry=r,
        )
        self.revenue = Counter(
            "x402_gateway_revenue_atomic_units",
            "Settled revenue in the asset's atomic units (USDC: 1e6 per dollar)",
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
            "Origin time to response head (paid requests)",
            buckets=_FAST,
            registry=r,
        )
        self.request_seconds = Histogram(
            "x402_gateway_request_duration_seconds",
            "Whole request time, to the last byte of the response",
            ["route"],
            buckets=_TOTAL,
            registry=r,
        )
        self.dependency_errors = Counter(
            "x402_gateway_dependency_errors",
            "Requests failed by a dependency: facilitator, store or origin",
            ["dependency", "reason"],
            registry=r,
        )
        self.facilitator_failures = Counter(
            "x402_gateway_facilitator_failures",
            "Failed calls to one facilitator endpoint (each failover step counts)",
            ["facilitator", "operation"],
            registry=r,
        )
        self.in_flight = Gauge(
            "x402_gateway_in_flight_requests", "Requests being handled", registry=r
        )
        self.config_generation = Gauge(
            "x402_gateway_config_generation",
            "Generation of the config in use: 1 at start, +1 per accepted reload",
            registry=r,
        )
        self.config_reload_failures = Counter(
            "x402_gateway_config_reload_failures", "Config reloads rejected", registry=r
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # Labelled children looked up once per label values, not per payment (labels() takes
        # a lock and re-stringifies); bounded: a reason may come from a facilitator's answer.
        # functools' LRU: a hit is one C call (cachetools' is ~5 Python calls, 3 a payment).
        # `_child(family, *values)` is `family.labels(*values)` from it, called as is (no
        # method around it: payments, revenue and sign-ins share it).
        self._child = functools.lru_cache(maxsize=512)(_labelled)
        self.engine = EngineMetrics(r)
        self.channels = ChannelMetrics(r)  # batch-settlement claims (issue 14)
        self.sign_ins = Counter(
            "x402_gateway_sign_ins",
            "SIWX sign-ins (access: {for: ...}) by route pattern: signed_in, or refused "
            "with its reason",
            ["route", "outcome", "reason"],
            registry=r,
        )
        self.chain_reads = Counter(
            "x402_gateway_chain_reads",
            "verify: local chain reads (balance + authorizationState) by network: ok, "
            "fallback (the facilitator verified instead) or the refusal reason",
            ["network", "outcome"],
            registry=r,
        )

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, error: GatewayError | None
    ) -> None:
        # Any token is a valid HTTP method: unknown ones share one label value, so a client
        # cannot mint series. The labelled children are cached (labels() is a locked lookup).
        key = (route, method if method in _METHODS else "OTHER", status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(key[0], key[1], str(status)),
                self.request_seconds.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)
        dependency = dependency_of(error) if error is not None else None
        if dependency is not None and error is not None:
            self.dependency_errors.labels(dependency, error.reason).inc()

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request, and its payment if it carried one."""
        label = record.label
        self.observe_request(label, record.method, record.status_code, record.seconds, record.error)
        if record.carried_payment:
            self.observe_payment(record, label)
        elif (sign_in := record.sign_in) is not None:
            self._child(self.sign_ins, label, sign_in.name, sign_in.reason).inc()

    def observe_payment(self, record: RequestRecord, label: str | None = None) -> None:
        """Count a request that carried a payment: its outcome, step times and revenue.
        `label`: `record.label` when the caller has it already."""
        outcome = record.outcome()
        self._child(self.payments, outcome.name, outcome.reason).inc()
        claim = record.claim
        if claim is None:
            return
        timings = claim.timings
        for seconds, histogram in (
            (timings.verify, self.verify_seconds),
            (timings.settle, self.settle_seconds),
            (timings.origin, self.origin_seconds),
        ):
            if seconds is not None:
                histogram.observe(seconds)
        if claim.settled is not None and claim.settled.success:
            req = claim.matched.requirement
            # The record holds what was settled (a metered payment: less than the maximum).
            settled = int(claim.record.amount)
            route = label if label is not None else record.label
            self._child(self.revenue, req.asset, req.network, route).inc(settled)

    def verified(self) -> None:
        """The facilitator accepted a payment (not a final outcome)."""
        self._child(self.payments, VERIFIED, "").inc()

    def facilitator_failed(self, url: str, operation: str) -> None:
        """The facilitator client's failure callback (one endpoint, one call)."""
        self.facilitator_failures.labels(safe_url(url), operation).inc()

    def chain_read(self, network: str, outcome: str) -> None:
        """`verify: local`'s callback, once per payment it judged on chain (or fell back)."""
        self.chain_reads.labels(network, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --- the settlement engine (issue 13) ---------------------------------------------------


class SettlerKey(Protocol):
    """One settler key as the engine reports it (gateway.facilitators.engine.KeyState)."""

    @property
    def address(self) -> str: ...
    @property
    def balance(self) -> int | None: ...
    @property
    def in_flight(self) -> int: ...


class EngineView(Protocol):
    """What the exporter reads of a running engine at scrape time."""

    def key_states(self) -> Sequence[SettlerKey]: ...


_BATCH = (1, 2, 5, 10, 20, 50, 100, 200, 500)
# Engine counters exported as x402_gateway_engine_events_total{event=...}.
_ENGINE_EVENTS = (
    "settled",
    "failed",
    "refused",
    "answered_pending",
    "transactions",
    "replaced",
    "rebroadcast",
    "reorged",
    "reorg_lost",
    "gap_fills",
    "requeued",
)


class EngineMetrics(Collector):
    """The in-process engine's batch sizes and receipt latency (told as they happen, through
    `observe`, the engine's Observer) and its keys' gas, in-flight and event counts (read
    from the engine attached last, at scrape time: a reload's new engine replaces it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "x402_gateway_engine_batch_size",
            "Payments per settlement transaction sent",
            buckets=_BATCH,
            registry=registry,
        )
        self.receipt_seconds = Histogram(
            "x402_gateway_engine_receipt_seconds",
            "From a settlement's first broadcast to its receipt",
            buckets=_SLOW,
            registry=registry,
        )
        self._view: EngineView | None = None
        self._stats: Callable[[], Mapping[str, float]] | None = None
        registry.register(self)

    def attach(self, view: EngineView, stats: Callable[[], Mapping[str, float]]) -> None:
        self._view, self._stats = view, stats

    def observe(self, name: str, value: float) -> None:
        if name == "batch_size":
            self.batch_size.observe(value)
        elif name == "receipt_latency":
            self.receipt_seconds.observe(value)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families exist only once an engine is attached

    def collect(self) -> Iterator[Metric]:
        if self._view is None or self._stats is None:
            return
        balance = GaugeMetricFamily(
            "x402_gateway_settler_gas_balance_wei",
            "Native gas token each settler key holds, as last read",
            labels=["address"],
        )
        in_flight = GaugeMetricFamily(
            "x402_gateway_settler_in_flight_transactions",
            "Transactions sent by each settler key and not yet final",
            labels=["address"],
        )
        for key in self._view.key_states():
            if key.balance is not None:
                balance.add_metric([key.address], float(key.balance))
            in_flight.add_metric([key.address], float(key.in_flight))
        stats = self._stats()
        pending = GaugeMetricFamily(
            "x402_gateway_engine_pending_transactions",
            "Settlement transactions sent and not yet mined",
            value=stats.get("pending_transactions", 0.0),
        )
        events = CounterMetricFamily(
            "x402_gateway_engine_events",
            "The engine's events: settled, failed, refused, transactions, replaced, reorged...",
            labels=["event"],
        )
        for name in _ENGINE_EVENTS:
            events.add_metric([name], stats.get(name, 0.0))
        yield from (balance, in_flight, pending, events)
