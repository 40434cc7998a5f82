"""Metered prices (`upto`) through a real gateway: the payer authorizes the route's maximum,
the origin states what the call cost in `Settlement-Overrides`, the gateway settles exactly
that (through the SDK's facilitator over HTTP, the upto Permit2 proxy, anvil) and strips the
header. Paid in TestUSDT by the SDK's own upto client. Money is counted on chain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiohttp import web
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    create_siwx_payload,
    encode_siwx_header,
)
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.mechanisms.evm import EthAccountSigner
from x402.schemas import SettleResponse

from gateway.demo import x402_sdk as sdk
from gateway.demo.payer import pay_challenge, payment_required_of
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, ThreadedApp, gateway

pytestmark = pytest.mark.e2e
MAXIMUM = 100_000  # $0.10 in 6-decimal TestUSDT
DEFAULT = 10_000  # $0.01
PUBLIC_URL = "https://api.example.com"  # what SIWX proofs are bound to (`/access/*`)


class MeteredOrigin(ThreadedApp):
    """An API that states what each call cost: `?amount=<as the spec allows>` becomes its
    `Settlement-Overrides` header (absent: it states nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            self.calls.append(request.path)
            headers = {}
            if "amount" in request.query:
                headers["Settlement-Overrides"] = json.dumps({"amount": request.query["amount"]})
            return web.json_response({"answer": "42", "path": request.path}, headers=headers)

        app = web.Application()
        app.router.add_get("/chat/{name}", chat)
        app.router.add_get("/access/{name}", chat)
        app.router.add_get("/stream/{name}", self.stream)
        return app

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """SSE: `events` token events of `size` bytes, a `usage` event stating `amount`
        (after token number `usage_at`, default: at the end), then the end; `fail=1` resets
        the connection before the end; `pause` seconds between events."""
        self.calls.append(request.path)
        q = request.query
        events, size = int(q.get("events", "3")), int(q.get("size", "16"))
        usage_at, pause = int(q.get("usage_at", str(events))), float(q.get("pause", "0"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        token = token_event(size)
        for i in range(events):
            if i == usage_at and "amount" in q:
                await resp.write(usage_event(q["amount"]))
            await resp.write(token)
            if pause:
                await asyncio.sleep(pause)
        if q.get("fail") == "1" and request.transport is not None:
            request.transport.abort()
            return resp
        if usage_at >= events and "amount" in q:
            await resp.write(usage_event(q["amount"]))
        await resp.write_eof()
        return resp


def token_event(size: int) -> bytes:
    return b"event: token\ndata: " + b"x" * size + b"\n\n"


def usage_event(amount: str) -> bytes:
    return b"event: usage\ndata: " + json.dumps({"amount": amount}).encode() + b"\n\n"


@pytest.fixture(scope="module")
def metered_origin() -> Iterator[MeteredOrigin]:
    o = MeteredOrigin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    metered_origin: MeteredOrigin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    usdt = {"address": chain.local.usdt, "name": "Tether USD", "version": "1", "decimals": 6}
    cfg = {
        "upstream": metered_origin.url,
        "facilitator": {"url": facilitator_url, "timeout": "20s"},
        "network": chain.network,
        "pay_to": pay_to,
        "public_url": PUBLIC_URL,
        "assets": {"usdt": {**usdt, "transfer": "permit2", "symbol": "USDT"}},
        "routes": [
            {"path": "/chat/*", "price": {"upto": "$0.10", "default": "$0.01"}, "asset": "usdt"},
            {
                "path": "/access/*",
                "price": {"upto": "$0.10", "default": "$0.01"},
                "asset": "usdt",
                "access": {"for": "1h"},
            },
            {
                "path": "/stream/*",
                "price": {"upto": "$0.10", "default": "$0.01"},
                "asset": "usdt",
                "stream_usage": {"sse_event": "usage"},
            },
        ],
    }
    with gateway(cfg, tmp_path_factory.mktemp("gw-upto")) as g:
        yield g


async def _paid_headers(
    gw: GatewayProcess, chain: Chain, path: str, payer: Any = None
) -> tuple[dict[str, str], str]:
    payer = payer or chain.local.new_usdt_payer(1_000_000, approve=True)
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.local.usdt)])
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + path)
    assert challenge.status_code == 402, challenge.text
    headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
    return headers, payer.address


async def _get(gw: GatewayProcess, path: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(gw.url + path, headers=headers)


async def test_the_challenge_asks_for_the_maximum_bound_to_the_facilitator(
    gw: GatewayProcess, chain: Chain
) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + "/chat/hello")
    assert r.status_code == 402
    (req,) = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"]).accepts
    assert (req.scheme, req.amount) == ("upto", str(MAXIMUM))
    assert req.asset.lower() == chain.local.usdt.lower()
    assert req.extra["assetTransferMethod"] == "permit2"
    assert req.extra["facilitatorAddress"].lower() == chain.facilitator_address.lower()


@pytest.mark.parametrize(
    ("stated", "settled"),
    [
        ("$0.0123", 12_300),  # dollars
        ("12300", 12_300),  # atomic units
        ("25%", 25_000),  # of the maximum
        (None, DEFAULT),  # the origin states nothing: the route's default
        ("150000", MAXIMUM),  # more than authorized: capped
        ("0", 0),  # nothing used: nothing settled, no transaction
    ],
)
async def test_the_origin_states_usage_and_exactly_that_settles(
    gw: GatewayProcess,
    chain: Chain,
    metered_origin: MeteredOrigin,
    pay_to: str,
    stated: str | None,
    settled: int,
) -> None:
    query = "" if stated is None else "?" + httpx.QueryParams({"amount": stated}).__str__()
    path = f"/chat/{len(metered_origin.calls)}"
    headers, payer = await _paid_headers(gw, chain, path)
    before = chain.local.usdt_balance_of(pay_to)
    txs = chain.tx_count(chain.facilitator_address)
    r = await _get(gw, path + query, headers)
    assert r.status_code == 200, r.text
    assert "Settlement-Overrides" not in r.headers  # the origin's word to the gateway only
    assert r.json()["answer"] == "42"
    receipt = decode_payment_response_header(r.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.amount == str(settled), receipt
    print(f"\nupto stated {stated!r}: settled {settled} units, tx {receipt.transaction or '-'}")
    assert chain.local.usdt_balance_of(pay_to) == before + settled
    assert chain.local.usdt_balance_of(payer) == 1_000_000 - settled
    assert chain.tx_count(chain.facilitator_address) == txs + (1 if settled else 0)
    if stated == "150000":
        assert "usage_capped" in gw.logs()


async def test_a_metered_payment_buys_one_response_even_sent_10_times_at_once(
    gw: GatewayProcess, chain: Chain, metered_origin: MeteredOrigin, pay_to: str
) -> None:
    path = "/chat/burst"
    headers, _ = await _paid_headers(gw, chain, path)
    before = chain.local.usdt_balance_of(pay_to)
    txs = chain.tx_count(chain.facilitator_address)
    answers: list[Any] = await asyncio.gather(
        *(_get(gw, path + "?amount=%240.0123", headers) for _ in range(10))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1 and set(statuses) <= {200, 409}, statuses
    assert metered_origin.calls.count(path) == 1
    replay = await _get(gw, path + "?amount=%240.05", headers)
    assert replay.status_code == 409
    assert chain.local.usdt_balance_of(pay_to) == before + 12_300
    assert chain.tx_count(chain.facilitator_address) == txs + 1


# --- streamed: the amount in the last SSE event, settled after the last byte -------------


@dataclass
class Received:
    status: int
    size: int
    tail: bytes  # the stream's last bytes: the usage event and the receipt event

    def receipt(self) -> Any:
        marker = b"event: payment-response\ndata: "
        assert marker in self.tail, self.tail[-500:]
        data = self.tail.rsplit(marker, 1)[1].split(b"\n\n", 1)[0]
        return SettleResponse.model_validate_json(data)


async def _stream(
    gw: GatewayProcess, path: str, headers: dict[str, str], stop_after: int | None = None
) -> Received:
    got, tail = 0, b""
    async with (
        httpx.AsyncClient(timeout=60) as http,
        http.stream("GET", gw.url + path, headers=headers) as r,
    ):
        assert "PAYMENT-RESPONSE" not in r.headers  # the amount is not known yet
        async for chunk in r.aiter_raw():
            got += len(chunk)
            tail = (tail + chunk)[-4096:]
            if stop_after is not None and got >= stop_after:
                break  # the client leaves early
        return Received(r.status_code, got, tail)


async def test_a_10000_event_stream_settles_its_final_usage_in_bounded_memory(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    from tests.e2e.proxy_procs import rss_bytes
    from tests.e2e.test_proxy_memory import MAX_GROWTH, MiB, Sampler

    events, size = 10_000, 16 * 1024  # 160 MiB of events: buffering it would show
    path = "/stream/big"
    query = f"?events={events}&size={size}&amount=%240.0123"
    headers, payer = await _paid_headers(gw, chain, path)
    assert gw.proc is not None
    before, txs = chain.local.usdt_balance_of(pay_to), chain.tx_count(chain.facilitator_address)
    baseline = rss_bytes(gw.proc.pid)
    with Sampler(gw.proc.pid) as sampler:
        got = await _stream(gw, path + query, headers)
    assert got.status == 200
    origin_bytes = events * len(token_event(size)) + len(usage_event("$0.0123"))
    assert got.size > origin_bytes  # every event, then the receipt
    assert usage_event("$0.0123") in got.tail
    receipt = got.receipt()
    assert receipt.success and receipt.amount == "12300", receipt
    growth = (sampler.peak - baseline) / MiB
    print(
        f"\nSSE {events} events, {got.size / MiB:.0f} MiB: RSS +{growth:.1f} MiB "
        f"(baseline {baseline / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB, "
        f"{sampler.samples} samples); settled 12300 in {receipt.transaction}"
    )
    assert sampler.samples >= 3 and sampler.peak - baseline < MAX_GROWTH
    assert chain.local.usdt_balance_of(pay_to) == before + 12_300
    assert chain.local.usdt_balance_of(payer) == 1_000_000 - 12_300
    assert chain.tx_count(chain.facilitator_address) == txs + 1


@pytest.mark.parametrize(
    ("query", "settled"),
    [("", DEFAULT), ("&amount=150000", MAXIMUM), ("&amount=0", 0)],
    ids=["states-nothing", "states-too-much", "states-zero"],
)
async def test_a_stream_stating_nothing_too_much_or_zero(
    gw: GatewayProcess, chain: Chain, pay_to: str, query: str, settled: int
) -> None:
    path = f"/stream/s{settled}"
    headers, _ = await _paid_headers(gw, chain, path)
    before, txs = chain.local.usdt_balance_of(pay_to), chain.tx_count(chain.facilitator_address)
    got = await _stream(gw, f"{path}?events=5{query}", headers)
    assert got.status == 200 and got.receipt().amount == str(settled)
    assert chain.local.usdt_balance_of(pay_to) == before + settled
    assert chain.tx_count(chain.facilitator_address) == txs + (1 if settled else 0)


async def _balance_settles(chain: Chain, address: str, expected: int) -> int:
    for _ in range(100):  # the gateway settles after the client left: give it time
        if (now := chain.local.usdt_balance_of(address)) == expected:
            return now
        await asyncio.sleep(0.1)
    return chain.local.usdt_balance_of(address)


async def test_a_client_leaving_early_pays_what_the_origin_stated_so_far(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    path = "/stream/early"
    headers, _ = await _paid_headers(gw, chain, path)
    before = chain.local.usdt_balance_of(pay_to)
    query = "?events=400&size=64&usage_at=2&amount=%240.002&pause=0.01"
    got = await _stream(gw, path + query, headers, stop_after=2_000)
    assert got.status == 200
    assert await _balance_settles(chain, pay_to, before + 2_000) == before + 2_000


async def test_an_origin_failing_mid_stream_is_not_charged(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    path = "/stream/broken"
    headers, _ = await _paid_headers(gw, chain, path)
    before, txs = chain.local.usdt_balance_of(pay_to), chain.tx_count(chain.facilitator_address)
    with pytest.raises(httpx.HTTPError):
        await _stream(gw, path + "?events=50&amount=%240.05&usage_at=1&fail=1", headers)
    await asyncio.sleep(1)
    assert chain.local.usdt_balance_of(pay_to) == before
    assert chain.tx_count(chain.facilitator_address) == txs
    # Nothing was charged, so the claim was released: the same payment may buy a response.
    again = await _get(gw, "/stream/broken?events=2&amount=%240.01", headers)
    assert again.status_code == 200


async def test_typescript_client_pays_a_metered_route_for_what_the_origin_stated(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    from tests.e2e.test_permit2 import node_pay

    payer = chain.local.new_usdt_payer(1_000_000)  # no gas, no allowance: sponsored approval
    before = chain.local.usdt_balance_of(pay_to)
    url = gw.url + "/chat/ts?amount=%240.0123"
    result = await asyncio.to_thread(node_pay, url, payer.key.hex(), chain)
    assert result.get("status") == 200, result
    assert result["settlement"]["success"] and result["settlement"]["amount"] == "12300", result
    assert chain.local.usdt_balance_of(pay_to) == before + 12_300
    assert chain.local.usdt_balance_of(payer.address) == 1_000_000 - 12_300


async def _signed_in(gw: GatewayProcess, payer: Any, path: str) -> httpx.Response:
    """`path` asked with a SIWX proof by `payer`, made by the SDK for a fresh challenge."""
    async with httpx.AsyncClient(timeout=30) as http:
        challenge = await http.get(gw.url + path)
        assert challenge.status_code == 402, challenge.text
        declared = payment_required_of(challenge.headers, challenge.content).extensions or {}
        siwx = declared[SIGN_IN_WITH_X]
        chain = siwx["supportedChains"][0]
        info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
        proof = await create_siwx_payload(info, EthAccountSigner(payer), PUBLIC_URL + path)
        return await http.get(gw.url + path, headers={SIGN_IN_WITH_X: encode_siwx_header(proof)})


async def test_a_metered_call_that_used_nothing_buys_no_access_window(
    gw: GatewayProcess, chain: Chain, pay_to: str
) -> None:
    """`access` on a metered route: a payment settled for nothing (the origin stated 0) is
    no payment, so it signs its payer in to nothing; one settled for something does (red
    team, session 8: settling 0 used to open the whole window, every call in it free)."""
    payer = chain.local.new_usdt_payer(1_000_000, approve=True)
    headers, _ = await _paid_headers(gw, chain, "/access/zero", payer)
    r = await _get(gw, "/access/zero?amount=0", headers)
    assert r.status_code == 200, r.text
    assert decode_payment_response_header(r.headers["PAYMENT-RESPONSE"]).amount == "0"
    refused = await _signed_in(gw, payer, "/access/after-zero")
    assert refused.status_code == 402, refused.text
    assert payment_required_of(refused.headers, refused.content).error == "siwx_not_paid"
    headers, _ = await _paid_headers(gw, chain, "/access/some", payer)
    r = await _get(gw, "/access/some?amount=12300", headers)
    assert r.status_code == 200, r.text
    assert chain.local.usdt_balance_of(payer.address) == 1_000_000 - 12_300
    assert (await _signed_in(gw, payer, "/access/after-some")).status_code == 200
