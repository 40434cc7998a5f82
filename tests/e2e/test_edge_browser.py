"""Issue 12 item 4: a browser page on another site pays through the gateway with `@x402/fetch`.

The page is served from `localhost:<port>` (another origin and another site than the gateway's
127.0.0.1), holds a fresh anvil account's key, and pays with `wrapFetchWithPaymentFromConfig`
from the npm packages, bundled by esbuild; Debian's chromium runs it headless (playwright-core
drives it). Behind the gateway is the lenient origin, which has its own permissive CORS setup
(it reflects the Origin and every requested header), as a real API for browsers would.

Before issue 12 item 4 the gateway's own 402 carried no `Access-Control-Allow-Origin`, so the
browser hid it and the page never saw the challenge. Now the gateway's `cors:` policy (default:
any page) puts it on every answer it writes, and answers the paid retry's preflight itself: the
direct test pays and settles. The same page through a proxy that adds only that header pays
too, with nothing left for the proxy to add; with it stripped off the 402, the page cannot pay
(so the header is the whole reason).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount

from gateway.demo import chain as chainlib
from tests.e2e.browser_parts import AllowOriginProxy, PageServer, bundle, drive, missing_tools
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.e2e.lenient_parts import SECRET, LenientOrigin, edge_config

pytestmark = pytest.mark.e2e
PRICE = 1000  # "$0.001" in the 6-decimal test USDC
PAGE_ORIGIN = "http://localhost:8080"  # any other site; only the gateway's answer is checked


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if why := missing_tools():
        pytest.skip(why)
    return bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def lenient() -> Iterator[LenientOrigin]:
    origin = LenientOrigin().start()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def browser_gw(
    chain: Chain,
    lenient: LenientOrigin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    cfg = edge_config(chain, lenient.url, pay_to, facilitator_url)
    with gateway(cfg, tmp_path_factory.mktemp("browser-gw")) as gw:
        yield gw


@pytest.fixture
def pay_in_browser(
    script: Path, chain: Chain, pay_to: str, tmp_path: Path
) -> Callable[[str, LocalAccount], dict[str, Any]]:
    """Open the paying page for `url` with `payer`'s key; what the page and chromium saw."""

    def pay(url: str, payer: LocalAccount) -> dict[str, Any]:
        config = {
            "url": url,
            "key": "0x" + bytes(payer.key).hex(),
            "network": chain.network,
            "asset": chain.token,
        }
        page = PageServer(script, config).start()
        try:
            return drive(page.url, tmp_path / "profile")
        finally:
            page.stop()

    return pay


def assert_paid_and_settled_on_chain(
    seen: dict[str, Any], payer: LocalAccount, chain: Chain, before: tuple[int, int], pay_to: str
) -> None:
    result = seen["result"]
    assert result["ok"], seen
    assert result["status"] == 200, seen
    assert result["payer"].lower() == payer.address.lower()
    assert SECRET in result["body"]  # the origin's paid content, in the page
    settlement = result["settlement"]
    assert settlement is not None and settlement["success"], seen
    receipt = chainlib.rpc_call(
        chain.rpc_url, "eth_getTransactionReceipt", [settlement["transaction"]]
    )
    assert receipt is not None and int(receipt["status"], 16) == 1
    assert chain.balance_of(payer.address) == before[0] - PRICE
    assert chain.balance_of(pay_to) == before[1] + PRICE


def test_a_page_on_another_site_pays_through_the_gateway(
    browser_gw: GatewayProcess,
    pay_in_browser: Callable[[str, LocalAccount], dict[str, Any]],
    make_payer: Callable[..., LocalAccount],
    chain: Chain,
    pay_to: str,
) -> None:
    payer = make_payer()
    before = (chain.balance_of(payer.address), chain.balance_of(pay_to))
    seen = pay_in_browser(browser_gw.url + "/paid/in-browser", payer)
    assert_paid_and_settled_on_chain(seen, payer, chain, before, pay_to)


def test_the_same_page_pays_through_a_proxy_adding_only_allow_origin(
    browser_gw: GatewayProcess,
    pay_in_browser: Callable[[str, LocalAccount], dict[str, Any]],
    make_payer: Callable[..., LocalAccount],
    chain: Chain,
    pay_to: str,
) -> None:
    """The harness works, and `Access-Control-Allow-Origin` on the gateway's 402 is all the
    direct test lacks: with only that added by a proxy, the same page pays and settles."""
    proxy = AllowOriginProxy(browser_gw.url).start()
    try:
        payer = make_payer()
        before = (chain.balance_of(payer.address), chain.balance_of(pay_to))
        seen = pay_in_browser(proxy.url + "/paid/via-proxy", payer)
        assert_paid_and_settled_on_chain(seen, payer, chain, before, pay_to)
        # Before item 4 it had to add the header to the gateway's 402 (the preflight and the
        # paid 200 came with the origin's own); now the gateway's answers all carry it.
        assert proxy.changed == [], proxy.changed
    finally:
        proxy.stop()


def test_without_allow_origin_on_the_402_the_page_cannot_pay(
    browser_gw: GatewayProcess,
    pay_in_browser: Callable[[str, LocalAccount], dict[str, Any]],
    make_payer: Callable[..., LocalAccount],
    chain: Chain,
) -> None:
    """The other half of the proof: with the header taken off the 402 (the gateway now sends
    it), the browser hides the challenge from the page, whose fetch fails, and nothing is
    paid: what the direct test showed before item 4's fix."""
    proxy = AllowOriginProxy(browser_gw.url, strip=True).start()
    try:
        payer = make_payer()
        before = chain.balance_of(payer.address)
        seen = pay_in_browser(proxy.url + "/paid/no-cors", payer)
    finally:
        proxy.stop()
    assert seen["result"]["ok"] is False, seen
    assert "Failed to fetch" in seen["result"]["error"], seen
    assert any("Access-Control-Allow-Origin" in line for line in seen["console"]), seen
    assert any("/paid/no-cors failed" in line for line in seen["requests"]), seen
    assert chain.balance_of(payer.address) == before


# --- the gateway's own answers, without a browser ------------------------------------------


def gateway_answers(gw: GatewayProcess) -> dict[str, httpx.Response]:
    origin = {"Origin": PAGE_ORIGIN}
    bad = {**origin, "PAYMENT-SIGNATURE": base64.b64encode(b"not json").decode()}
    with httpx.Client(base_url=gw.url) as http:
        return {
            "402": http.get("/paid/x", headers=origin),
            "400": http.get("/paid/x", headers=bad),
            "405": http.delete("/paid/x", headers=origin),
        }


@pytest.mark.parametrize("status", ["402", "400", "405"])
def test_the_gateways_own_answers_allow_a_page_on_another_site(
    status: str, browser_gw: GatewayProcess
) -> None:
    r = gateway_answers(browser_gw)[status]
    assert r.status_code == int(status)
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", PAGE_ORIGIN)
    assert "PAYMENT-REQUIRED" in r.headers["Access-Control-Expose-Headers"]
    if r.headers.get("Access-Control-Allow-Origin") == PAGE_ORIGIN:
        assert "Origin" in r.headers.get("Vary", "")


def test_a_page_pays_through_the_gateway_in_front_of_an_origin_without_cors(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path: Path,
    pay_in_browser: Callable[[str, LocalAccount], dict[str, Any]],
    make_payer: Callable[..., LocalAccount],
) -> None:
    """A legacy API with no CORS setup at all: the gateway answers the paid retry's preflight
    and puts its own Allow-Origin on the paid 200, so the page that paid can read the answer
    and its receipt (else it would be charged for an answer the browser hides from it)."""
    cfg = edge_config(chain, origin.url, pay_to, facilitator_url)
    (tmp_path / "plain-gw").mkdir()
    with gateway(cfg, tmp_path / "plain-gw") as gw:
        payer = make_payer()
        before = (chain.balance_of(payer.address), chain.balance_of(pay_to))
        seen = pay_in_browser(gw.url + "/paid/plain", payer)
    result = seen["result"]
    assert result["ok"] and result["status"] == 200, seen
    assert json.loads(result["body"])["payer"].lower() == payer.address.lower()
    assert result["settlement"] is not None and result["settlement"]["success"], seen
    assert chain.balance_of(payer.address) == before[0] - PRICE
    assert chain.balance_of(pay_to) == before[1] + PRICE
    assert [c["method"] for c in origin.log.for_path("/paid/plain")] == ["GET"]  # no OPTIONS
