"""Paid requests end to end: a real gateway process, anvil, the test USDC, the SDK's
facilitator over HTTP and the SDK's paying client. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequired

from gateway.demo.chain import ANVIL_KEYS
from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.procs import free_port

pytestmark = pytest.mark.e2e
PRICE = 1000  # $0.001 in 6-decimal USDC
BEFORE_PRICE = 2000


def config(chain: Chain, origin: Origin, pay_to: str, facilitator: Any) -> dict[str, Any]:
    return {
        "upstream": origin.url,
        "facilitator": facilitator,
        "network": "eip155:84532",
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "server_timing": True,
        "timeouts": {"read": "1s"},
        "routes": [
            {"path": "/free/*", "price": "free"},
            {
                "path": "/paid/*",
                "price": "$0.001",
                "methods": ["GET", "POST"],
                "description": "A paid report",
            },
            {"path": "/before/*", "price": "$0.002", "settle": "before"},
        ],
    }


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    cfg = config(chain, origin, pay_to, {"url": facilitator_url, "timeout": "10s"})
    with gateway(cfg, tmp_path_factory.mktemp("gw")) as g:
        yield g


@pytest.fixture
def client_for(chain: Chain) -> Callable[[LocalAccount], Any]:
    return lambda account: make_x402_client(account, [(chain.network, chain.token)])


async def pay(
    gw: GatewayProcess, client: Any, path: str, *, v1: bool = False, method: str = "GET"
) -> tuple[dict[str, str], Any]:
    async with httpx.AsyncClient() as http:
        challenge = await http.request(method, gw.url + path)
    assert challenge.status_code == 402, challenge.text
    return await pay_challenge(client, challenge.headers, challenge.content, v1=v1)


def settlement(resp: httpx.Response, name: str = "PAYMENT-RESPONSE") -> Any:
    return decode_payment_response_header(resp.headers[name])


# --- unpaid -----------------------------------------------------------------------------


async def test_unpaid_request_gets_a_challenge_and_never_reaches_the_origin(
    gw: GatewayProcess, origin: Origin, chain: Chain, pay_to: str
) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + "/paid/challenge-only")
    assert r.status_code == 402
    assert r.headers["Cache-Control"] == "no-store"
    assert "PAYMENT-REQUIRED" in r.headers["Access-Control-Expose-Headers"]
    required = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"])
    assert isinstance(required, PaymentRequired) and required.x402_version == 2
    assert required.resource is not None and required.resource.url.endswith("/paid/challenge-only")
    (req,) = required.accepts
    assert (req.scheme, req.network, req.amount) == ("exact", "eip155:84532", str(PRICE))
    assert req.asset.lower() == chain.token.lower() and req.pay_to.lower() == pay_to.lower()
    body = r.json()
    assert body["x402Version"] == 1
    (v1,) = body["accepts"]
    assert v1["network"] == "base-sepolia" and v1["maxAmountRequired"] == str(PRICE)
    assert v1["description"] == "A paid report" and v1["resource"].endswith("/paid/challenge-only")
    assert origin.log.for_path("/paid/challenge-only") == []


# --- paid, v2 and v1 --------------------------------------------------------------------


async def test_v2_paid_get_settles_once_and_moves_exactly_the_price(
    gw: GatewayProcess, origin: Origin, chain: Chain, pay_to: str, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    before = (chain.balance_of(payer.address), chain.balance_of(pay_to))
    txs = chain.tx_count(chain.facilitator_address)
    headers, _ = await pay(gw, client_for(payer), "/paid/report")
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + "/paid/report", headers={**headers, "X-Payer": "0xforged"})
    assert r.status_code == 200, r.text
    receipt = settlement(r)
    assert (
        receipt.success and receipt.transaction.startswith("0x") and len(receipt.transaction) == 66
    )
    assert r.headers["Cache-Control"] == "private, no-store"  # issue 12 item 7
    assert "verify" in r.headers["Server-Timing"] and "settle" in r.headers["Server-Timing"]
    assert r.json()["payer"].lower() == payer.address.lower()
    assert chain.balance_of(payer.address) == before[0] - PRICE
    assert chain.balance_of(pay_to) == before[1] + PRICE
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    seen = origin.log.for_path("/paid/report")[-1]["headers"]
    assert not {"PAYMENT-SIGNATURE", "X-PAYMENT"} & {h.upper() for h in seen}
    assert seen["X-Payer"].lower() == payer.address.lower()


async def test_v2_paid_post_streams_the_body_to_the_origin(
    gw: GatewayProcess, origin: Origin, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/paid/upload", method="POST")
    body = os.urandom(3 << 20)
    async with httpx.AsyncClient() as http:
        r = await http.post(gw.url + "/paid/upload", headers=headers, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert settlement(r).success


async def test_v1_client_pays_from_the_v1_body(
    gw: GatewayProcess, chain: Chain, pay_to: str, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/paid/legacy", v1=True)
    assert "X-PAYMENT" in headers
    before = chain.balance_of(pay_to)
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + "/paid/legacy", headers=headers)
    assert r.status_code == 200, r.text
    assert settlement(r, "X-PAYMENT-RESPONSE").success
    assert "PAYMENT-RESPONSE" not in r.headers
    assert chain.balance_of(pay_to) == before + PRICE


async def test_paid_128mib_download_streams_in_bounded_memory(
    gw: GatewayProcess, make_payer: Any, client_for: Any
) -> None:
    from tests.e2e.proxy_procs import rss_bytes
    from tests.e2e.test_proxy_memory import MAX_GROWTH, MiB, Sampler

    assert gw.proc is not None
    size = 128 * MiB
    headers, _ = await pay(gw, client_for(make_payer()), f"/paid/big?bytes={size}")
    baseline = rss_bytes(gw.proc.pid)
    got = 0
    with Sampler(gw.proc.pid) as sampler:
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream("GET", gw.url + f"/paid/big?bytes={size}", headers=headers) as r,
        ):
            assert r.status_code == 200
            assert settlement(r).success  # settled before the first byte
            async for chunk in r.aiter_raw():
                got += len(chunk)
    assert got == size
    print(f"\npaid 128 MiB download: RSS +{(sampler.peak - baseline) / MiB:.1f} MiB")
    assert sampler.samples >= 3
    assert sampler.peak - baseline < MAX_GROWTH


# --- one payment, one response ------------------------------------------------------------


async def test_sequential_replay_is_refused_without_a_transaction(
    gw: GatewayProcess, origin: Origin, chain: Chain, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/paid/once")
    async with httpx.AsyncClient() as http:
        first = await http.get(gw.url + "/paid/once", headers=headers)
        assert first.status_code == 200
        txs = chain.tx_count(chain.facilitator_address)
        again = await http.get(gw.url + "/paid/once", headers=headers)
    assert again.status_code == 409
    assert again.headers["Content-Type"] == "application/problem+json"
    assert again.json()["reason"] == "payment_already_used"
    # Answered from the record: the payer sees the transaction it already paid.
    assert settlement(again).transaction == settlement(first).transaction
    assert chain.tx_count(chain.facilitator_address) == txs
    assert len(origin.log.for_path("/paid/once")) == 1


async def test_fifty_concurrent_copies_buy_one_response(
    gw: GatewayProcess, origin: Origin, chain: Chain, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/paid/race")
    txs = chain.tx_count(chain.facilitator_address)
    before = chain.balance_of(payer.address)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50), timeout=30) as http:
        answers = await asyncio.gather(
            *(http.get(gw.url + "/paid/race", headers=headers) for _ in range(50))
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 402, 409}
    assert len(origin.log.for_path("/paid/race")) == 1
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(payer.address) == before - PRICE


# --- wrong payments ---------------------------------------------------------------------


def tamper(header: dict[str, str], change: Callable[[dict[str, Any]], None]) -> dict[str, str]:
    ((name, value),) = header.items()
    data = json.loads(base64.b64decode(value))
    change(data)
    return {name: base64.b64encode(json.dumps(data).encode()).decode()}


TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "amount": lambda d: d["accepted"].update(amount="1"),
    "pay_to": lambda d: d["accepted"].update(payTo="0x" + "12" * 20),
    "asset": lambda d: d["accepted"].update(asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    "network": lambda d: d["accepted"].update(network="eip155:8453"),
    "authorization_value": lambda d: d["payload"]["authorization"].update(value="1"),
    "authorization_to": lambda d: d["payload"]["authorization"].update(to="0x" + "12" * 20),
    "signature": lambda d: d["payload"].update(signature="0x" + "11" * 65),
}


@pytest.mark.parametrize("what", sorted(TAMPERS))
async def test_tampered_payment_is_refused_and_nothing_is_broadcast(
    what: str, gw: GatewayProcess, origin: Origin, chain: Chain, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    path = f"/paid/tampered-{what}"
    headers, _ = await pay(gw, client_for(payer), path)
    txs = chain.tx_count(chain.facilitator_address)
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + path, headers=tamper(headers, TAMPERS[what]))
    assert r.status_code in (400, 402), r.text
    assert "PAYMENT-REQUIRED" in r.headers
    assert r.json()["error"]
    assert chain.tx_count(chain.facilitator_address) == txs
    assert origin.log.for_path(path) == []
    assert chain.balance_of(payer.address) == 10_000_000


def signed_with_window(
    chain: Chain,
    payer: LocalAccount,
    required: PaymentRequired,
    valid_after: int,
    valid_before: int,
) -> dict[str, str]:
    """A correctly signed EIP-3009 authorization with a time window of our choosing."""
    req = required.accepts[0]
    auth = {
        "from": payer.address,
        "to": req.pay_to,
        "value": int(req.amount),
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": os.urandom(32),
    }
    signed = Account.sign_typed_data(
        payer.key,
        {"name": "USD Coin", "version": "2", "chainId": 84532, "verifyingContract": chain.token},
        {
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ]
        },
        auth,
    )
    payload = PaymentPayload(
        payload={
            "authorization": {
                **{k: str(v) for k, v in auth.items() if k != "nonce"},
                "nonce": "0x" + auth["nonce"].hex(),
            },
            "signature": "0x" + signed.signature.hex().removeprefix("0x"),
        },
        accepted=req,
        resource=required.resource,
    )
    value = base64.b64encode(payload.model_dump_json(by_alias=True, exclude_none=True).encode())
    return {"PAYMENT-SIGNATURE": value.decode()}


@pytest.mark.parametrize("window", ["expired", "not_yet_valid"])
async def test_authorization_outside_its_time_window_is_refused(
    window: str, gw: GatewayProcess, origin: Origin, chain: Chain, make_payer: Any
) -> None:
    payer = make_payer()
    path = f"/paid/window-{window}"
    async with httpx.AsyncClient() as http:
        required = decode_payment_required_header(
            (await http.get(gw.url + path)).headers["PAYMENT-REQUIRED"]
        )
        assert isinstance(required, PaymentRequired)
        now = int(time.time())
        after, before = (0, now - 60) if window == "expired" else (now + 3600, now + 7200)
        txs = chain.tx_count(chain.facilitator_address)
        r = await http.get(
            gw.url + path, headers=signed_with_window(chain, payer, required, after, before)
        )
    assert r.status_code == 402, r.text
    assert chain.tx_count(chain.facilitator_address) == txs
    assert origin.log.for_path(path) == []


MALFORMED = {
    "not_base64": "!!!not-base64!!!",
    "not_json": base64.b64encode(b"hello").decode(),
    "json_array": base64.b64encode(b"[1,2,3]").decode(),
    "missing_fields": base64.b64encode(b'{"x402Version": 2}').decode(),
    "wrong_types": base64.b64encode(b'{"x402Version": 2, "payload": 5, "accepted": "x"}').decode(),
    "oversized": "A" * 20_000,
    "deep_nesting": base64.b64encode(b"[" * 3000 + b"]" * 3000).decode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_payment_header_gets_a_4xx_with_its_reason(
    case: str, gw: GatewayProcess, origin: Origin
) -> None:
    path = f"/paid/malformed-{case}"
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + path, headers={"PAYMENT-SIGNATURE": MALFORMED[case]})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"] not in ("", None)
    assert origin.log.for_path(path) == []


# --- the origin fails: nothing is charged ---------------------------------------------


@pytest.mark.parametrize(("name", "status"), [("fail", 500), ("slow", 504), ("notfound", 404)])
async def test_origin_failure_charges_nothing_and_releases_the_claim(
    name: str, status: int, gw: GatewayProcess, chain: Chain, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), f"/paid/{name}")
    txs = chain.tx_count(chain.facilitator_address)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(gw.url + f"/paid/{name}", headers=headers)
        assert r.status_code == status, r.text
        assert "PAYMENT-RESPONSE" not in r.headers
        assert chain.tx_count(chain.facilitator_address) == txs
        assert chain.balance_of(payer.address) == 10_000_000
        # The claim was released: the same authorization still buys one good response.
        ok = await http.get(gw.url + "/paid/after-failure", headers=headers)
    assert ok.status_code == 200, ok.text
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE


async def test_a_paid_head_is_charged_as_a_get_and_buys_one_response(
    gw: GatewayProcess, origin: Origin, chain: Chain, make_payer: Any, client_for: Any
) -> None:
    """The origin runs its GET handler for a HEAD: a paid HEAD is a paid response (issue 11).
    Without a payment, a HEAD gets the 402 and never reaches the origin."""
    payer = make_payer()
    async with httpx.AsyncClient() as http:
        unpaid = await http.head(gw.url + "/paid/head")
    assert unpaid.status_code == 402 and "PAYMENT-REQUIRED" in unpaid.headers
    headers, _ = await pay(gw, client_for(payer), "/paid/head")
    txs = chain.tx_count(chain.facilitator_address)
    async with httpx.AsyncClient() as http:
        r = await http.head(gw.url + "/paid/head", headers=headers)
        again = await http.head(gw.url + "/paid/head", headers=headers)
    assert r.status_code == 200 and settlement(r).success
    assert (again.status_code, "PAYMENT-RESPONSE" in again.headers) == (409, True)
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE
    assert [c["method"] for c in origin.log.for_path("/paid/head")] == ["HEAD"]


async def test_settle_before_route_settles_then_forwards(
    gw: GatewayProcess, origin: Origin, chain: Chain, pay_to: str, make_payer: Any, client_for: Any
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/before/order", method="POST")
    async with httpx.AsyncClient() as http:
        r = await http.post(gw.url + "/before/order", headers=headers, content=b"{}")
    assert r.status_code == 200, r.text
    assert settlement(r).success
    assert chain.balance_of(payer.address) == 10_000_000 - BEFORE_PRICE
    # The origin failing after an up-front settlement is logged as a refund the operator owes.
    payer2 = make_payer()
    headers, _ = await pay(gw, client_for(payer2), "/before/fail", method="POST")
    async with httpx.AsyncClient() as http:
        r = await http.post(gw.url + "/before/fail", headers=headers, content=b"{}")
    assert r.status_code == 500
    assert chain.balance_of(payer2.address) == 10_000_000 - BEFORE_PRICE
    assert '"refund_due"' in gw.logs()
    assert payer2.address.lower() in gw.logs().lower()


# --- dependencies down: fail closed -------------------------------------------------------


async def test_facilitator_down_fails_closed_and_free_routes_still_work(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    make_payer: Any,
    client_for: Any,
    gw: GatewayProcess,
    tmp_path: Path,
) -> None:
    payer = make_payer()
    headers, _ = await pay(gw, client_for(payer), "/paid/no-facilitator")
    dead = {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s"}
    with gateway(config(chain, origin, pay_to, dead), tmp_path, ready=False) as down:
        async with httpx.AsyncClient() as http:
            challenge = await http.get(down.url + "/paid/no-facilitator")
            paid = await http.get(down.url + "/paid/no-facilitator", headers=headers)
            free = await http.get(down.url + "/free/still-works")
            ready = await http.get(down.admin_url + "/readyz")
    assert challenge.status_code == 402  # challenges come from config alone
    assert paid.status_code == 503 and "Retry-After" in paid.headers
    assert free.status_code == 200
    assert ready.status_code == 503
    assert origin.log.for_path("/paid/no-facilitator") == []
    assert chain.balance_of(payer.address) == 10_000_000


async def test_in_process_facilitator_mode(
    chain: Chain, origin: Origin, pay_to: str, make_payer: Any, client_for: Any, tmp_path: Path
) -> None:
    local = {"local": {"rpc_url": chain.rpc_url, "private_key": "${SETTLER_KEY}"}}
    cfg = config(chain, origin, pay_to, local)
    with gateway(cfg, tmp_path, env={"SETTLER_KEY": ANVIL_KEYS[3]}) as g:
        payer = make_payer()
        headers, _ = await pay(g, client_for(payer), "/paid/local")
        async with httpx.AsyncClient() as http:
            r = await http.get(g.url + "/paid/local", headers=headers)
            again = await http.get(g.url + "/paid/local", headers=headers)
    assert r.status_code == 200, r.text
    assert settlement(r).success
    assert again.status_code == 409
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE
    assert ANVIL_KEYS[3] not in g.logs()
