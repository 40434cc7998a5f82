from __future__ import annotations

import ipaddress
import json
import re
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentRequired, SettleResponse
from x402.schemas.helpers import parse_payment_required
from x402.schemas.v1 import PaymentRequiredV1

from gateway.payment.challenge import (
    ERROR_PAYMENT_REQUIRED,
    EXPOSE_HEADERS,
    EXPOSE_HEADERS_VALUE,
    PreparedChallenges,
    payment_required,
    paywall_html,
    wants_html,
)
from gateway.payment.receipts import settlement_header
from gateway.payment.requirements import requirements_v1, requirements_v2
from tests.unit.wire_helpers import (
    ASSET,
    OTHER_ASSET,
    PAY_TO,
    URL,
    requirement,
    route,
    settings,
)

PERMIT2 = MappingProxyType({"name": "USDC", "version": "2", "assetTransferMethod": "permit2"})


def _x402_config(page: str) -> dict[str, Any]:
    found = re.search(r"window\.x402 = (.*?);\n", page)
    assert found, "the paywall page carries no window.x402"
    config: dict[str, Any] = json.loads(found.group(1))
    return config


def test_requirements_v2_are_the_routes_own_terms_on_the_wire() -> None:
    nested = MappingProxyType(
        {"name": "USDC", "version": "2", "more": MappingProxyType({"a": (1,)})}
    )
    reqs = requirements_v2(
        route(requirement(extra=nested), requirement(amount=5, asset=OTHER_ASSET))
    )
    assert [r.model_dump(by_alias=True) for r in reqs] == [
        {
            "scheme": "exact",
            "network": "eip155:84532",
            "asset": ASSET,
            "amount": "1000",
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2", "more": {"a": [1]}},
        },
        {
            "scheme": "exact",
            "network": "eip155:84532",
            "asset": OTHER_ASSET,
            "amount": "5",
            "payTo": PAY_TO,
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"},
        },
    ]


def test_requirements_v1_use_legacy_names_and_leave_out_what_v1_cannot_pay() -> None:
    priced = route(
        requirement(network="eip155:8453"),
        requirement(network="eip155:31337"),  # anvil: no v1 name
        requirement(extra=PERMIT2),  # v1 clients cannot sign Permit2
        requirement(network="eip155:84532", amount=7),
    )
    reqs = requirements_v1(priced, URL)
    assert [(r.network, r.max_amount_required) for r in reqs] == [
        ("base", "1000"),
        ("base-sepolia", "7"),
    ]
    assert reqs[0].model_dump(by_alias=True, exclude_none=True) == {
        "scheme": "exact",
        "network": "base",
        "maxAmountRequired": "1000",
        "resource": URL,
        "description": "A paid report",
        "mimeType": "application/json",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "asset": ASSET,
        "extra": {"name": "USDC", "version": "2"},
    }


def test_payment_required_carries_v2_header_and_v1_body() -> None:
    priced = route(requirement(), requirement(network="eip155:31337"))
    head, body = payment_required(priced, URL, ERROR_PAYMENT_REQUIRED)
    assert head["Content-Type"] == "application/json"
    assert head["Cache-Control"] == "no-store"

    v2 = decode_payment_required_header(head["PAYMENT-REQUIRED"])
    assert isinstance(v2, PaymentRequired)
    assert v2.x402_version == 2
    assert v2.error == "Payment required"
    assert v2.resource is not None
    assert (v2.resource.url, v2.resource.description, v2.resource.mime_type) == (
        URL,
        "A paid report",
        "application/json",
    )
    assert v2.accepts == requirements_v2(priced)

    v1 = parse_payment_required(body)
    assert isinstance(v1, PaymentRequiredV1)
    assert json.loads(body)["x402Version"] == 1
    assert v1.error == "Payment required"
    assert v1.accepts == requirements_v1(priced, URL)
    assert len(v1.accepts) == 1  # anvil's chain has no v1 name


def test_error_reason_is_carried_in_both_versions() -> None:
    head, body = payment_required(route(), URL, "invalid_exact_evm_payload_signature")
    v2 = decode_payment_required_header(head["PAYMENT-REQUIRED"])
    assert v2.error == "invalid_exact_evm_payload_signature"
    assert json.loads(body)["error"] == "invalid_exact_evm_payload_signature"


def test_challenges_cache_answers_like_the_uncached_builder() -> None:
    priced = route()
    challenges = PreparedChallenges(settings(priced, route(index=4, accepts=())), cache_size=2)
    for url in (URL, URL + "&y=2", "http://other/paid/report", URL):  # evicts and rebuilds
        assert challenges.payment_required(priced, url, "e") == payment_required(priced, url, "e")
    # each error is its own entry
    again = challenges.payment_required(priced, URL, "other")
    assert decode_payment_required_header(again[0]["PAYMENT-REQUIRED"]).error == "other"


def test_challenges_hand_out_headers_the_caller_may_extend() -> None:
    priced = route()
    challenges = PreparedChallenges(settings(priced))
    first, _ = challenges.payment_required(priced, URL, "e")
    first["Access-Control-Expose-Headers"] = EXPOSE_HEADERS_VALUE
    second, _ = challenges.payment_required(priced, URL, "e")
    assert "Access-Control-Expose-Headers" not in second


def test_challenges_answer_for_a_route_added_after_start_up() -> None:
    challenges = PreparedChallenges(settings())
    late = route(index=9, accepts=(requirement(amount=42),))
    assert challenges.payment_required(late, URL, "e") == payment_required(late, URL, "e")


def _request(host: str = "gw.test:8402", peer: str = "203.0.113.7", **head: str) -> Any:
    fwd = {k.replace("_", "-"): v for k, v in head.items()}
    return make_mocked_request("GET", "/ignored", headers={"Host": host, **fwd}).clone(remote=peer)


def test_resource_url_prefers_public_url() -> None:
    public = PreparedChallenges(settings(public_url="https://api.example.com/"))
    assert public.resource_url(_request(), "/a", "b=1") == "https://api.example.com/a?b=1"
    assert public.resource_url(_request(), "/a", "") == "https://api.example.com/a"


def test_resource_url_is_the_requests_own_without_public_url() -> None:
    plain = PreparedChallenges(settings())
    assert plain.resource_url(_request(), "/a/b", "c=%20") == "http://gw.test:8402/a/b?c=%20"
    assert plain.resource_url(_request(host="[::1]:8402"), "/a", "") == "http://[::1]:8402/a"
    assert plain.resource_url(_request(host="evil/x?y"), "/a", "") == "http://localhost/a"


def test_forwarded_scheme_and_host_count_only_from_trusted_proxies() -> None:
    trusting = PreparedChallenges(settings(trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),)))
    forwarded = {"X_Forwarded_Proto": "HTTPS, http", "X_Forwarded_Host": "api.example.com"}
    via_proxy = _request(peer="10.1.2.3", **forwarded)
    direct = _request(peer="203.0.113.7", **forwarded)
    assert trusting.resource_url(via_proxy, "/a", "") == "https://api.example.com/a"
    assert trusting.resource_url(direct, "/a", "") == "http://gw.test:8402/a"
    odd = _request(peer="10.1.2.3", X_Forwarded_Proto="gopher", X_Forwarded_Host="a b")
    assert trusting.resource_url(odd, "/a", "") == "http://gw.test:8402/a"


@pytest.mark.parametrize(
    ("accept", "agent", "browser"),
    [
        ("text/html,application/xhtml+xml", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120", True),
        ("application/json", "Mozilla/5.0", False),
        ("text/html", "curl/8.5.0", False),
        ("*/*", "Mozilla/5.0", False),
        ("", "", False),
    ],
)
def test_wants_html_mirrors_the_sdk(accept: str, agent: str, browser: bool) -> None:
    assert wants_html(accept, agent) is browser
    request = CIMultiDict({"accept": accept, "user-agent": agent})
    assert PreparedChallenges.wants_html(request) is browser


def test_paywall_is_the_sdk_page_with_this_challenge() -> None:
    priced = route(requirement(amount=2_500_000))
    page = paywall_html(priced, URL, ERROR_PAYMENT_REQUIRED)
    assert page.startswith("<!DOCTYPE html>")
    config = _x402_config(page)
    head, _ = payment_required(priced, URL, ERROR_PAYMENT_REQUIRED)
    challenge = decode_payment_required_header(head["PAYMENT-REQUIRED"])
    assert config["paymentRequired"] == challenge.model_dump(by_alias=True, exclude_none=True)
    assert config["amount"] == 2.5
    assert config["currentUrl"] == URL
    assert config["testnet"] is True


def test_paywall_amount_uses_the_tokens_decimals_and_mainnet_flag() -> None:
    priced = route(requirement(network="eip155:8453", amount=3 * 10**17, decimals=18))
    config = _x402_config(paywall_html(priced, URL, "e"))
    assert config["amount"] == 0.3
    assert config["testnet"] is False


def test_paywall_escapes_what_the_page_embeds() -> None:
    hostile = route(description="</script><script>alert(1)</script>")
    page = paywall_html(hostile, URL + "&q=</script>", "e")
    assert "<script>alert(1)" not in page
    assert "&q=</script>" not in page
    assert _x402_config(page)["paymentRequired"]["resource"]["description"] == (
        "</script><script>alert(1)</script>"
    )


def test_paywall_falls_back_to_plain_html_off_evm() -> None:
    odd = route(requirement(network="solana:devnet"), description="<b>report</b>")
    page = paywall_html(odd, URL, "e")
    assert "window.x402" not in page
    assert "&lt;b&gt;report&lt;/b&gt;" in page
    assert "<b>report</b>" not in page
    assert "0.001000 USDC" in page


def test_challenges_paywall_keeps_the_challenge_header() -> None:
    priced = route()
    challenges = PreparedChallenges(settings(priced))
    assert challenges.paywall_html(priced, URL, "e") == paywall_html(priced, URL, "e")
    head, page = challenges.paywall(priced, URL, ERROR_PAYMENT_REQUIRED)
    assert head["Content-Type"] == "text/html; charset=utf-8"
    assert head["Cache-Control"] == "no-store"
    assert decode_payment_required_header(head["PAYMENT-REQUIRED"]).accepts == requirements_v2(
        priced
    )
    assert b"window.x402" in page


@pytest.mark.parametrize(("version", "name"), [(2, "PAYMENT-RESPONSE"), (1, "X-PAYMENT-RESPONSE")])
def test_settlement_header_per_version(version: int, name: str) -> None:
    settled = SettleResponse(
        success=True, transaction="0x" + "aa" * 32, network="eip155:84532", payer=PAY_TO
    )
    header, value = settlement_header(settled, version)
    assert header == name
    assert decode_payment_response_header(value) == settled


def test_expose_headers_list_every_x402_response_header() -> None:
    assert set(EXPOSE_HEADERS) == {"PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"}
    assert ", ".join(EXPOSE_HEADERS) == EXPOSE_HEADERS_VALUE


def test_a_permit2_route_declares_sponsored_approval_and_others_declare_nothing() -> None:
    head, _ = payment_required(route(requirement(), requirement(extra=PERMIT2)), URL, "e")
    declared = decode_payment_required_header(head["PAYMENT-REQUIRED"]).extensions or {}
    assert list(declared) == ["erc20ApprovalGasSponsoring"]
    plain, _ = payment_required(route(), URL, "e")
    assert decode_payment_required_header(plain["PAYMENT-REQUIRED"]).extensions is None


# --- payment channels (batch-settlement) ------------------------------------------------

AUTHORIZER = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
CHANNEL_EXTRA = {"name": "USDC", "version": "2", "withdrawDelay": 3600, "minDeposit": "1000000"}


def _channel_route(**extra: Any) -> Any:
    from decimal import Decimal

    from gateway.config.settings import ChannelTerms

    batch = requirement(scheme="batch-settlement", extra=MappingProxyType(CHANNEL_EXTRA | extra))
    return route(requirement(), batch, channel=ChannelTerms(Decimal(1)))


def _offered(challenges: PreparedChallenges, priced: Any) -> tuple[PaymentRequired, Any]:
    head, body = challenges.payment_required(priced, URL, "e")
    required = decode_payment_required_header(head["PAYMENT-REQUIRED"])
    assert isinstance(required, PaymentRequired)
    return required, json.loads(body)


def _supported(**extra: Any) -> Any:
    from x402.schemas import SupportedKind, SupportedResponse

    kind = SupportedKind(
        x402_version=2, scheme="batch-settlement", network="eip155:84532", extra=extra or None
    )
    return lambda: SupportedResponse(kinds=[kind])


def test_a_channel_route_offers_batch_settlement_beside_exact_in_v2_only() -> None:
    priced = _channel_route(receiverAuthorizer=AUTHORIZER)
    required, v1_body = _offered(PreparedChallenges(settings(priced)), priced)
    assert [a.scheme for a in required.accepts] == ["exact", "batch-settlement"]
    assert required.accepts[1].extra == CHANNEL_EXTRA | {"receiverAuthorizer": AUTHORIZER}
    assert [a["scheme"] for a in v1_body["accepts"]] == ["exact"]  # no v1 batch-settlement


def test_without_its_own_authorizer_a_channel_route_names_the_facilitators() -> None:
    priced = _channel_route()
    challenges = PreparedChallenges(
        settings(priced), supported=_supported(receiverAuthorizer=AUTHORIZER)
    )
    required, _ = _offered(challenges, priced)
    assert required.accepts[1].extra["receiverAuthorizer"] == AUTHORIZER
    # none known yet (facilitator down, or it advertises none): exact alone is offered
    for unknown in (_supported(), None):
        required, _ = _offered(PreparedChallenges(settings(priced), supported=unknown), priced)
        assert [a.scheme for a in required.accepts] == ["exact"]
