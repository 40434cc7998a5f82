"""Idempotent retries end to end (the payment-identifier extension): a real gateway process
on a real redis-server, anvil, the SDK facilitator over HTTP, the SDK payer naming its
payment with the SDK's own helper. A payer whose connection dropped before the 200 arrived
sends the same payment again and gets the identical body, with no new transaction and no
new origin call."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    append_payment_identifier_to_extensions,
)
from x402.http import x402HTTPClient
from x402.http.utils import decode_payment_response_header

from gateway.demo.payer import make_x402_client, payment_required_of
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import PRICE, gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.procs import RedisServer

pytestmark = pytest.mark.e2e
KEEP = 64 * 1024


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    cfg = gateway_config(
        chain,
        origin.url,
        pay_to,
        {"url": facilitator_url},
        redis.url,
        idempotency={"keep_body": KEEP, "keep_for": "1h"},
    )
    with gateway(cfg, tmp_path_factory.mktemp("retries")) as g:
        yield g


async def named_payment(
    gw: GatewayProcess, chain: Chain, payer: LocalAccount, path: str, payment_id: str
) -> dict[str, str]:
    """The SDK payer's payment for `path`, named with `payment_id` (the SDK's helper)."""
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + path)
    assert challenge.status_code == 402
    required: Any = payment_required_of(challenge.headers, challenge.content)
    assert PAYMENT_IDENTIFIER in (required.extensions or {})  # the gateway declares it
    append_payment_identifier_to_extensions(required.extensions, payment_id)
    client = make_x402_client(payer, [(chain.network, chain.token)])
    payload = await client.create_payment_payload(required)
    return x402HTTPClient(client).encode_payment_signature_header(payload)


def send_and_drop(gw: GatewayProcess, path: str, headers: dict[str, str]) -> bytes:
    """Send the request on a raw socket, read the first bytes of the answer, hang up."""
    url = urlsplit(gw.url)
    lines = [f"GET {path} HTTP/1.1", f"Host: {url.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        first = sock.recv(512)
    return first


async def test_a_retry_after_a_dropped_connection_gets_the_identical_body(
    gw: GatewayProcess,
    chain: Chain,
    origin: Origin,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer()
    path = "/paid/big?bytes=50000"
    headers = await named_payment(gw, chain, payer, path, "pay_retry_after_drop_0001")
    txs, paid_to = chain.tx_count(chain.facilitator_address), chain.balance_of(pay_to)

    first = send_and_drop(gw, path, headers)
    assert first.startswith(b"HTTP/1.1 200"), first
    async with httpx.AsyncClient(timeout=30) as http:
        retry = await http.get(gw.url + path, headers=headers)
        again = await http.get(gw.url + path, headers=headers)

    assert retry.status_code == 200 and again.status_code == 200
    assert retry.content == b"x" * 50000 and again.content == retry.content
    assert hashlib.sha256(retry.content).digest() == hashlib.sha256(again.content).digest()
    receipt = decode_payment_response_header(retry.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.payer == payer.address
    # One origin call, one transaction, one charge: the retries came from the store.
    assert len(origin.log.for_path("/paid/big")) == 1
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(pay_to) == paid_to + PRICE
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE


async def test_same_identifier_with_another_payment_is_409(
    gw: GatewayProcess, chain: Chain, make_payer: Callable[..., LocalAccount]
) -> None:
    payer = make_payer()
    one = await named_payment(gw, chain, payer, "/paid/a", "pay_same_id_two_payments")
    two = await named_payment(gw, chain, payer, "/paid/a", "pay_same_id_two_payments")
    txs = chain.tx_count(chain.facilitator_address)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(gw.url + "/paid/a", headers=one)).status_code == 200
        conflict = await http.get(gw.url + "/paid/a", headers=two)
    assert conflict.status_code == 409
    assert conflict.json()["reason"] == "payment_identifier_conflict"
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert chain.balance_of(payer.address) == 10_000_000 - PRICE


async def test_a_response_too_large_to_keep_is_sent_once_then_409_with_the_receipt(
    gw: GatewayProcess, chain: Chain, make_payer: Callable[..., LocalAccount]
) -> None:
    payer = make_payer()
    path = f"/paid/big?bytes={KEEP * 4}"
    headers = await named_payment(gw, chain, payer, path, "pay_too_large_to_keep_01")
    txs = chain.tx_count(chain.facilitator_address)
    async with httpx.AsyncClient(timeout=30) as http:
        whole = await http.get(gw.url + path, headers=headers)
        retry = await http.get(gw.url + path, headers=headers)
    assert whole.status_code == 200 and len(whole.content) == KEEP * 4
    assert retry.status_code == 409 and retry.json()["reason"] == "response_not_kept"
    assert (
        decode_payment_response_header(retry.headers["PAYMENT-RESPONSE"]).transaction
        == decode_payment_response_header(whole.headers["PAYMENT-RESPONSE"]).transaction
    )
    assert chain.tx_count(chain.facilitator_address) == txs + 1


async def test_a_malformed_identifier_is_400(
    gw: GatewayProcess, chain: Chain, make_payer: Callable[..., LocalAccount]
) -> None:
    payer = make_payer()
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + "/paid/m")
    required: Any = payment_required_of(challenge.headers, challenge.content)
    required.extensions[PAYMENT_IDENTIFIER]["info"]["id"] = "short"  # under 16 characters
    client = make_x402_client(payer, [(chain.network, chain.token)])
    payload = await client.create_payment_payload(required)
    headers = x402HTTPClient(client).encode_payment_signature_header(payload)
    async with httpx.AsyncClient(timeout=30) as http:
        bad = await http.get(gw.url + "/paid/m", headers=headers)
    assert bad.status_code == 400 and bad.json()["reason"] == "invalid_payment_identifier"
    assert chain.balance_of(payer.address) == 10_000_000
