"""gateway.observe.metrics (and the outcome mapping of gateway.payment.outcome, and the
access-line fields of gateway.observe.access): names and types as documented, one registry
per instance, the payment outcome mapping, and what a paid request's record counts and logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from x402.schemas import SettleResponse

from gateway.errors import (
    BadRequest,
    FacilitatorUnavailable,
    GatewayError,
    MalformedPayment,
    PayloadTooLarge,
    PaymentConflict,
    PaymentError,
    SettlementFailed,
    SettlementPending,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.observe.access import payment_fields
from gateway.observe.metrics import Metrics, dependency_of, safe_url
from gateway.observe.record import RequestRecord
from gateway.payment import decode_payment, match_requirement
from gateway.payment.outcome import payment_outcome
from gateway.payment.paid_claim import Claim, StepTimings
from gateway.store import PaymentRecord
from tests.unit.wire_helpers import URL, headers, new_account, requirement, route, sdk_v2_payment

ROOT = Path(__file__).resolve().parents[3]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def types(metrics: Metrics) -> dict[str, str]:
    body, _ = metrics.render()
    # `*_created` (prometheus-client's creation timestamps) are not ours to document.
    families = text_string_to_metric_families(body.decode())
    return {f.name: f.type for f in families if not f.name.endswith("_created")}


def test_every_documented_metric_is_exposed_with_its_type() -> None:
    assert types(Metrics()) == {
        "x402_gateway_requests": "counter",
        "x402_gateway_payments": "counter",
        "x402_gateway_revenue_atomic_units": "counter",
        "x402_gateway_verify_seconds": "histogram",
        "x402_gateway_settle_seconds": "histogram",
        "x402_gateway_origin_ttfb_seconds": "histogram",
        "x402_gateway_request_duration_seconds": "histogram",
        "x402_gateway_dependency_errors": "counter",
        "x402_gateway_facilitator_failures": "counter",
        "x402_gateway_chain_reads": "counter",
        "x402_gateway_in_flight_requests": "gauge",
        "x402_gateway_config_generation": "gauge",
        "x402_gateway_config_reload_failures": "counter",
        "x402_gateway_engine_batch_size": "histogram",
        "x402_gateway_engine_receipt_seconds": "histogram",
        "x402_gateway_sign_ins": "counter",
        "x402_gateway_channel_unclaimed_atomic_units": "gauge",
        "x402_gateway_channels_open": "gauge",
        "x402_gateway_channels_withdrawal_pending": "gauge",
        "x402_gateway_channels_unknown_network": "gauge",
        "x402_gateway_channel_claims": "counter",
        "x402_gateway_channel_claimed_vouchers": "counter",
        "x402_gateway_channel_claimed_atomic_units": "counter",
        "x402_gateway_channel_settles": "counter",
        "x402_gateway_channel_last_claim_timestamp_seconds": "gauge",
    }


def test_each_instance_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.observe_request("/a", "GET", 200, 0.01, None)
    one.config_reload_failures.inc()
    name = "x402_gateway_requests_total"
    key = (name, frozenset({"route": "/a", "method": "GET", "status": "200"}.items()))
    assert samples(one)[key] == 1
    assert key not in samples(two)
    assert samples(two)[("x402_gateway_config_reload_failures_total", frozenset())] == 0


SIG = "invalid_exact_evm_payload_signature"


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        (None, "settled", ("settled", "")),
        (None, "claimed", ("not_charged", "origin_error")),
        (None, "settling", ("settle_pending", "client_gone")),
        (None, "pending", ("settle_pending", "client_gone")),
        (None, "refund_due", ("refund_due", "origin_error")),
        (UpstreamTimeout("slow"), "refund_due", ("refund_due", "upstream_timeout")),
        (PaymentConflict("again"), None, ("replayed", "payment_already_used")),
        (PaymentConflict(reason="payment_in_flight"), None, ("replayed", "payment_in_flight")),
        (SettlementFailed(reason="no_funds"), "failed", ("settle_failed", "no_funds")),
        (SettlementPending(), "settlement_pending", ("settle_pending", "settlement_pending")),
        (PaymentError(reason=SIG), "claimed", ("invalid", SIG)),
        (MalformedPayment(reason="invalid_base64"), None, ("invalid", "invalid_base64")),
        (FacilitatorUnavailable("down"), "claimed", ("error", "facilitator_unavailable")),
        (StoreUnavailable("down"), None, ("error", "store_unavailable")),
        (UpstreamError("reset"), "claimed", ("not_charged", "upstream_unreachable")),
        (PayloadTooLarge("big"), "claimed", ("not_charged", "body_too_large")),
    ],
)
def test_payment_outcome_maps_every_ending(
    error: GatewayError | None, status: str | None, expected: tuple[str, str]
) -> None:
    assert payment_outcome(error, status) == expected


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (FacilitatorUnavailable(), "facilitator"),
        (SettlementPending(), "facilitator"),
        (StoreUnavailable(), "store"),
        (UpstreamError(), "origin"),
        (UpstreamTimeout(), "origin"),
        (BadRequest(), None),
        (PaymentError(), None),
    ],
)
def test_dependency_of(error: GatewayError, dependency: str | None) -> None:
    assert dependency_of(error) == dependency


def test_observe_request_counts_dependency_errors() -> None:
    m = Metrics()
    m.observe_request("/paid/*", "GET", 503, 0.2, StoreUnavailable("redis down"))
    m.observe_request("/paid/*", "GET", 402, 0.001, PaymentError())
    got = samples(m)
    errors = "x402_gateway_dependency_errors_total"
    assert got[(errors, frozenset({"dependency": "store", "reason": "store_unavailable"}.items()))]
    assert len([k for k in got if k[0] == errors]) == 1
    count = ("x402_gateway_request_duration_seconds_count", frozenset({("route", "/paid/*")}))
    assert got[count] == 2


def test_safe_url_drops_credentials_and_query() -> None:
    assert safe_url("https://user:pw@fac.example:8443/x402?api_key=s3cret") == (
        "https://fac.example:8443/x402"
    )
    assert safe_url("http://[::1]:9000/") == "http://[::1]:9000/"


def test_facilitator_failures_are_labelled_by_safe_url() -> None:
    m = Metrics()
    m.facilitator_failed("https://fac.example/v1?token=abc", "settle")
    key = (
        "x402_gateway_facilitator_failures_total",
        frozenset({"facilitator": "https://fac.example/v1", "operation": "settle"}.items()),
    )
    assert samples(m)[key] == 1


def make_claim(amount: int = 1500) -> Claim:
    priced = route(requirement(amount=amount))
    _, value = sdk_v2_payment(priced, new_account())
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", value)), 16384)
    assert decoded is not None
    matched = match_requirement(priced, decoded, URL)
    record = PaymentRecord(
        status="claimed",
        request_id="r1",
        route=priced.name,
        payer=matched.payer,
        amount=str(amount),
        asset=matched.requirement.asset,
        network=matched.requirement.network,
        nonce=matched.identity.nonce,
    )
    return Claim(matched.identity.key, matched, record, 300.0)


def paid_record(
    claim: Claim | None, error: GatewayError | None, *, client_gone: bool
) -> RequestRecord:
    """What the flow fills in for a request to the priced route `/paid/*`."""
    return RequestRecord(
        request_id="r1",
        method="GET",
        path="/paid/x",
        generation=1,
        route=route(),
        claim=claim,
        error=error,
        status=None if client_gone else 200,
    )


def observe_payment(
    m: Metrics, claim: Claim | None, error: GatewayError | None, *, client_gone: bool
) -> dict[str, object]:
    """Count it (metrics) and return its access-line fields: both read the one record."""
    record = paid_record(claim, error, client_gone=client_gone)
    m.observe_payment(record)
    return payment_fields(record)


def test_a_settled_payment_counts_revenue_and_logs_who_paid_what() -> None:
    m = Metrics()
    claim = make_claim(1500)
    claim.timings = StepTimings(verify=0.01, origin=0.2, settle=0.03)
    claim.settled = SettleResponse(
        success=True, transaction="0xabc", network=claim.matched.requirement.network
    )
    claim.record = claim.record.with_status("settled", transaction="0xabc")
    fields = observe_payment(m, claim, None, client_gone=False)
    req = claim.matched.requirement
    assert fields == {
        "payment": "settled",
        "payer": claim.matched.payer,
        "amount": "1500",
        "asset": req.asset,
        "network": req.network,
        "verify_ms": 10.0,
        "origin_ms": 200.0,
        "settle_ms": 30.0,
        "transaction": "0xabc",
    }
    got = samples(m)
    revenue = frozenset({"asset": req.asset, "network": req.network, "route": "/paid/*"}.items())
    assert got[("x402_gateway_revenue_atomic_units_total", revenue)] == 1500
    settled = frozenset({"outcome": "settled", "reason": ""}.items())
    assert got[("x402_gateway_payments_total", settled)] == 1
    for name in ("verify", "settle", "origin_ttfb"):
        assert got[(f"x402_gateway_{name}_seconds_count", frozenset())] == 1


def test_a_whole_request_counts_the_same_series_as_its_parts() -> None:
    """`observe` (the request, then its payment under the label it read once) leaves the
    registry as `observe_request` + `observe_payment` called apart do."""
    whole, parts = Metrics(), Metrics()
    for m in (whole, parts):
        claim = make_claim(1500)
        claim.timings = StepTimings(verify=0.01, origin=0.2, settle=0.03)
        claim.settled = SettleResponse(
            success=True, transaction="0xabc", network=claim.matched.requirement.network
        )
        claim.record = claim.record.with_status("settled", transaction="0xabc")
        record = paid_record(claim, None, client_gone=False)
        record.seconds = 0.25
        if m is whole:
            m.observe(record)
        else:
            m.observe_request("/paid/*", "GET", 200, 0.25, None)
            m.observe_payment(record)
    got, apart = (
        {k: v for k, v in samples(m).items() if not k[0].endswith("_created")}
        for m in (whole, parts)
    )
    assert got == apart
    req = make_claim(1500).matched.requirement
    revenue = frozenset({"asset": req.asset, "network": req.network, "route": "/paid/*"}.items())
    assert got[("x402_gateway_revenue_atomic_units_total", revenue)] == 1500


def test_an_unsettled_payment_counts_no_revenue() -> None:
    m = Metrics()
    claim = make_claim()
    claim.timings.verify = 0.01
    fields = observe_payment(m, claim, None, client_gone=True)
    assert fields["payment"] == "not_charged" and fields["payment_reason"] == "client_gone"
    assert "transaction" not in fields
    got = samples(m)
    assert not [k for k in got if k[0] == "x402_gateway_revenue_atomic_units_total"]
    assert got[("x402_gateway_settle_seconds_count", frozenset())] == 0


def test_a_refused_payment_without_a_claim_has_only_its_outcome() -> None:
    m = Metrics()
    fields = observe_payment(m, None, PaymentConflict("again"), client_gone=False)
    assert fields == {"payment": "replayed", "payment_reason": "payment_already_used"}


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {name for e in exprs for name in re.findall(r"x402_gateway_\w+", e)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    valid = {f + suffix for f, kind in types(Metrics()).items() for suffix in suffixes[kind]}
    assert used <= valid, used - valid
    # ...and every metric has a panel.
    assert {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used} == set(types(Metrics()))


def test_engine_metrics_read_the_attached_engine_at_scrape_time() -> None:
    from gateway.facilitators.engine import EngineStats, KeyState

    metrics = Metrics()
    assert b"x402_gateway_settler_gas_balance_wei" not in metrics.render()[0]  # no engine yet
    stats = EngineStats(observer=metrics.engine.observe)
    keys = [KeyState("0xA", 10**18, 2, 7), KeyState("0xB", None, 0, None)]

    class View:
        def key_states(self) -> list[KeyState]:
            return keys

    metrics.engine.attach(View(), stats.snapshot)
    stats.observe("batch_size", 10)
    stats.observe("receipt_latency", 0.5)
    stats.replaced, stats.pending_transactions = 1, 3
    body = metrics.render()[0].decode()
    assert 'x402_gateway_settler_gas_balance_wei{address="0xA"} 1e+18' in body
    assert 'address="0xB"} 0.0' in body and 'gas_balance_wei{address="0xB"}' not in body
    assert 'x402_gateway_settler_in_flight_transactions{address="0xA"} 2.0' in body
    assert "x402_gateway_engine_pending_transactions 3.0" in body
    assert 'x402_gateway_engine_events_total{event="replaced"} 1.0' in body
    assert "x402_gateway_engine_batch_size_sum 10.0" in body
    assert "x402_gateway_engine_receipt_seconds_count 1.0" in body


def test_labelled_payment_children_are_cached_bounded_and_still_count_right() -> None:
    """verified() and the outcome counter reuse their labelled children; more label values
    than the cache holds evict old ones, and a re-bound child keeps counting the same series."""
    metrics = Metrics()
    for _ in range(3):
        metrics.verified()
    for i in range(600):  # more reasons than the cache keeps
        metrics._child(metrics.payments, "invalid", f"reason_{i}").inc()
    metrics._child(metrics.payments, "invalid", "reason_0").inc()  # evicted, bound again
    metrics.verified()
    got = samples(metrics)
    key = "x402_gateway_payments_total"
    assert got[(key, frozenset({("outcome", "verified"), ("reason", "")}))] == 4
    assert got[(key, frozenset({("outcome", "invalid"), ("reason", "reason_0")}))] == 2
    assert got[(key, frozenset({("outcome", "invalid"), ("reason", "reason_599")}))] == 1
    assert metrics._child.cache_info().currsize <= 512
