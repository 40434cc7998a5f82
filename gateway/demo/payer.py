"""A paying client for the demo and the end-to-end tests: the SDK's `x402Client`.

Thin glue over the SDK, so that a test can sign a payment for a 402 answer and then send
it, replay it or tamper with it, and the demo can pay a request step by step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.client_base import SpendControlAsset
from x402.http import x402HTTPClient
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1, PaymentRequirementsV1

V1_NAMES = {"eip155:8453": "base", "eip155:84532": "base-sepolia"}


def make_x402_client(account: LocalAccount, assets: Sequence[tuple[str, str]] = ()) -> x402Client:
    """The SDK's payer client signing `exact` EVM payments (v2 and v1) with `account`.

    `assets`: (network, token) pairs it may pay in besides the SDK's known USDC
    deployments (the local test USDC is not one of them). v1 network names are allowed
    alongside their CAIP-2 ones.
    """
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account))
    allowed: list[SpendControlAsset] = []
    for network, token in assets:
        allowed.append({"network": network, "asset": token})
        if network in V1_NAMES:
            allowed.append({"network": V1_NAMES[network], "asset": token})
    if allowed:
        client.set_spend_controls({"allowed_assets": allowed})
    return client


def httpx_payer(client: x402Client, **httpx_kwargs: Any) -> x402HttpxClient:
    """An httpx.AsyncClient that answers 402s by paying (the SDK's "just pay" wrapper)."""
    return x402HttpxClient(client, **httpx_kwargs)


def payment_required_of(
    headers: Mapping[str, str], body: bytes | None = None, *, v1: bool = False
) -> PaymentRequired | PaymentRequiredV1:
    """The challenge in a 402 answer: the v2 `PAYMENT-REQUIRED` header, or (`v1=True`, or
    no header) the v1 JSON body."""
    if v1:
        if not body:
            raise ValueError("a v1 challenge is in the body, and the body is empty")
        return PaymentRequiredV1.model_validate_json(body)
    lowered = {k.lower(): v for k, v in headers.items()}
    return x402HTTPClient(x402Client()).get_payment_required_response(
        lambda name: lowered.get(name.lower()), body
    )


async def pay_challenge(
    client: x402Client,
    headers: Mapping[str, str],
    body: bytes | None = None,
    *,
    v1: bool = False,
) -> tuple[dict[str, str], PaymentPayload | PaymentPayloadV1]:
    """Sign a payment for a 402 answer: the header to send (`PAYMENT-SIGNATURE`, or
    `X-PAYMENT` for v1) and the payload it encodes (to read its nonce, or tamper with it)."""
    http = x402HTTPClient(client)
    payload = await http.create_payment_payload(payment_required_of(headers, body, v1=v1))
    return http.encode_payment_signature_header(payload), payload


async def sign_requirements(
    client: x402Client, requirements: PaymentRequirements, resource_url: str = "http://local/"
) -> PaymentPayload:
    """A v2 payment for exactly these requirements (no server needed)."""
    challenge = PaymentRequired(resource=ResourceInfo(url=resource_url), accepts=[requirements])
    payload = await client.create_payment_payload(challenge)
    if not isinstance(payload, PaymentPayload):
        raise TypeError(f"expected a v2 payload, got {type(payload).__name__}")
    return payload


async def sign_requirements_v1(
    client: x402Client, requirements: PaymentRequirementsV1
) -> PaymentPayloadV1:
    """A v1 payment for exactly these requirements."""
    payload = await client.create_payment_payload(
        PaymentRequiredV1(x402_version=1, accepts=[requirements])
    )
    if not isinstance(payload, PaymentPayloadV1):
        raise TypeError(f"expected a v1 payload, got {type(payload).__name__}")
    return payload


def authorization_of(payload: PaymentPayload | PaymentPayloadV1) -> dict[str, Any]:
    """The EIP-3009 authorization inside an `exact` payment (from, to, value, nonce...)."""
    authorization: dict[str, Any] = payload.payload["authorization"]
    return authorization
