"""Section E's channel calls (issue 14): one deposit through the SDK's batch-settlement
client, then vouchers signed before the clock, one per repeat call.

Each voucher carries the next cumulative amount (the gateway accepts exactly that one), so
they are sent in order, at concurrency 1, in contiguous slices of the interleaved rounds.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
from eth_account.signers.local import LocalAccount
from x402.client_base import prefer_scheme
from x402.http.utils import decode_payment_required_header
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload

from gateway.demo import x402_sdk as sdk

MIN_DEPOSIT = "$0.50"  # covers the deposit's own call and up to 499 vouchers at $0.001


def header_of(payload: PaymentPayload) -> dict[str, str]:
    raw = json.dumps(payload.model_dump(by_alias=True, mode="json")).encode()
    return {"PAYMENT-SIGNATURE": base64.b64encode(raw).decode()}


async def open_channel(url: str, env: Any, account: LocalAccount) -> PaymentPayload:
    """The deposit (and the first call), paid by the SDK's batch-settlement client."""
    client = sdk.make_payer_client(
        account, env.chain.rpc_url, [(env.chain.network, env.chain.token)]
    )
    client.register_policy(prefer_scheme(sdk.BATCH))
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            await resp.read()
            required = decode_payment_required_header(resp.headers["PAYMENT-REQUIRED"])
        deposit = await client.create_payment_payload(required)
        if not isinstance(deposit, PaymentPayload) or deposit.payload["type"] != "deposit":
            raise RuntimeError(f"expected a batch-settlement deposit, got {deposit}")
        async with session.get(url, headers=header_of(deposit)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"the deposit was refused: {resp.status} {body[:300]!r}")
    return deposit


def vouchers(deposit: PaymentPayload, account: LocalAccount, n: int) -> list[dict[str, str]]:
    """The next `n` calls' voucher headers, in order (the deposit paid for one call)."""
    price = int(deposit.accepted.amount)
    config = deposit.payload["channelConfig"]
    channel_id = deposit.payload["voucher"]["channelId"]
    signer = EthAccountSigner(account)
    headers = []
    for k in range(1, n + 1):
        fields = sign_voucher(signer, channel_id, (k + 1) * price, deposit.accepted.network)
        raw = {"type": "voucher", "channelConfig": config, "voucher": fields.to_dict()}
        headers.append(header_of(deposit.model_copy(update={"payload": raw})))
    return headers


def contiguous(items: list[Any], rounds: int) -> list[list[Any]]:
    """`items` in `rounds` consecutive slices (vouchers must arrive in order)."""
    size = -(-len(items) // rounds)
    return [items[i * size : (i + 1) * size] for i in range(rounds)]
